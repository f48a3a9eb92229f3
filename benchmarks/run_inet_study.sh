#!/usr/bin/env bash
# Issue 27's Imagenette study at 128 px on the validation part, as it is run (benchmarks/RESULTS.md, "Issue 27"):
# two chains of benchmarks/study.py, one thread each (2 cores), resumable (finished cells are JSON files under
# WORK/cells; killed students resume from their per-epoch checkpoints). Rerun the same command after a stop.
#   nohup bash benchmarks/run_inet_study.sh INET_DIR WORK > study.log 2>&1 &
# INET_DIR holds train/ and val/ made as README's "Imagenette at 128 px" recipe says. The proxy students are
# 100-epoch ResNet-18s (the 300-epoch ones check the proxy's ranking on three variants, last). DBR labels
# first for every variant, then one-hot labels for the three image sets.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 work=$2
S="benchmarks/study.py --teacher data/teachers/resnet18-imagenette.pt --train $data/train --val $data/val
   --threads 1 --student resnet18 --ipc 10 --seeds 1 --labels dbr"
chain() {
  .venv/bin/python $S --epochs 100 --work "$work/e100" --part "$1/2" --variants random rded nrr c-paper-f2 \
      c-noref i-paper-noref c-rded-nrr i-high i-paper-high c-bn.01 c-eps.3 c-it50
  .venv/bin/python $S --epochs 100 --work "$work/e100" --part "$1/2" --variants random rded nrr \
      --also-onehot random rded nrr
  .venv/bin/python $S --epochs 300 --work "$work/e300" --part "$1/2" --variants random rded nrr
}
chain 0 & a=$!
chain 1 & b=$!
wait $a; wait $b
.venv/bin/python $S --epochs 100 --work "$work/e100" --report
.venv/bin/python $S --epochs 300 --work "$work/e300" --report
