#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded Fashion-MNIST subset with the shipped BatchNorm
# teacher: distill NRR-DD images with their DBR labels, look at them, check them, and measure what they are
# worth: students trained on them vs on the same budget of random real images, both with DBR labels.
# Small settings (about 10 CPU-minutes; fewer student epochs reverse the verdict); outputs go to ./out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
TEACHER=data/teachers/convnet3bn-fmnist.pt
EPOCHS=100  # student epochs, and the epochs of DBR labels distill writes
rm -rf "$OUT" && mkdir -p "$OUT"
nrrstore distill --in data/fashion-mnist/train --teacher "$TEACHER" --ipc 5 --save-cams \
    --relabel-epochs "$EPOCHS" --out "$OUT/store"
nrrstore inspect "$OUT/store" --grid "$OUT/contact-sheet.png"
nrrstore verify "$OUT/store"
# Students from scratch (2 seeds each, batch 10) on the store and on random real images of the same IPC,
# relabelled with the same teacher and augmentation; tested on the embedded real test split.
nrrstore evaluate "$OUT/store" --val data/fashion-mnist/test --train data/fashion-mnist/train \
    --teacher "$TEACHER" --labels dbr --seeds 2 --epochs "$EPOCHS" --batch-size 10 \
    --work "$OUT/evaluate" --plot "$OUT/students.png"
