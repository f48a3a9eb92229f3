#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded Fashion-MNIST subset with the shipped teacher:
# distill (CIDD + NRR + DBR relabeling) -> inspect (with a contact sheet) -> verify -> train a student.
# Small settings so it finishes in a few minutes on 2 CPU cores; outputs go to ./out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
mkdir -p "$OUT"
nrrstore distill --in data/fashion-mnist/train --teacher data/teachers/convnet3-fmnist.pt \
    --ipc 5 --mipc 50 --iterations 30 --save-cams --relabel-epochs 20 --out "$OUT/store" --overwrite
nrrstore inspect "$OUT/store" --grid "$OUT/contact-sheet.png" --overwrite
nrrstore verify "$OUT/store"
nrrstore train-student "$OUT/store" --val data/fashion-mnist/test --arch convnet3 --epochs 20 --labels dbr
