#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded Fashion-MNIST subset with the shipped BatchNorm
# teacher: distill NRR-DD images with their DBR labels, look at them, check them, and measure what they are
# worth: students trained on them vs on the same budget of random real images, both with DBR labels.
# Small settings, about 3.5 CPU-minutes (README, "Two commands"); outputs go to ./out/demo (DEMO_OUT=DIR to
# change it; NRRSTORE_SKIP_SETUP=1 skips the setup step, as tests/test_demo.py does).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NRRSTORE_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# One thread: these models are tiny, and a second thread costs about twice the CPU time for little wall time.
# Student numbers are bit-identical run to run at a fixed thread count (README, "Reproducible numbers").
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${DEMO_OUT:-out/demo}
TEACHER=data/teachers/convnet3bn-fmnist.pt
EPOCHS=100  # student epochs, and the epochs of DBR labels distill writes
TIMEFORMAT="demo: %0lU user + %0lS sys of CPU time, %0lR of wall time"
time {
rm -rf "$OUT" && mkdir -p "$OUT"
nrrstore distill --in data/fashion-mnist/train --teacher "$TEACHER" --ipc 5 --save-cams \
    --relabel-epochs "$EPOCHS" --out "$OUT/store"
nrrstore inspect "$OUT/store" --grid "$OUT/contact-sheet.png"
nrrstore verify "$OUT/store"
# Students from scratch (2 seeds each, batch 10) on the store and on random real images of the same IPC,
# relabelled with the same teacher and augmentation; tested on the embedded real test split.
echo
nrrstore evaluate "$OUT/store" --val data/fashion-mnist/test --train data/fashion-mnist/train \
    --teacher "$TEACHER" --labels dbr --seeds 2 --epochs "$EPOCHS" --batch-size 10 \
    --work "$OUT/evaluate" --plot "$OUT/students.png"
cat <<DONE
images: $OUT/contact-sheet.png (with their CAMs); chart: $OUT/students.png
This is a quick look (IPC 5, 2 seeds, 100 epochs): its std is as large as the gain. A fair verdict uses
3 seeds of 300 epochs (about 11 CPU-minutes more):
  nrrstore relabel $OUT/store --teacher $TEACHER --epochs 300 --overwrite
  nrrstore evaluate $OUT/store --val data/fashion-mnist/test --train data/fashion-mnist/train \\
      --labels dbr --seeds 3 --epochs 300 --batch-size 10 --work $OUT/evaluate-300
DONE
}
