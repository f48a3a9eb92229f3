#!/usr/bin/env bash
# Issue 27, N3: RDED's evaluation (`--protocol rded`) of the `rded` preset on CIFAR-10 at IPC 10, against RDED's
# published 50.2 +- 0.3 (ConvNet-3, teacher 82.24%). Resumable: rerun the same command after a stop.
#   nohup bash benchmarks/run_rded_protocol.sh WORK > rded.log 2>&1 &
# WORK gets c10/{train,test} (README's CIFAR-10 recipe), the store and the evaluate work folder; the result is
# WORK/c10-rded-ipc10.json. RDED's protocol on CIFAR-10: factor 1, so its views are whole images (RandomResizedCrop
# with scale 1/factor..1 = 1..1), flips and CutMix (Beta(1, 1)); 300 epochs of KD at T 20 from full soft labels.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1
N=".venv/bin/nrrstore"
mkdir -p "$work/c10" /tmp/data
[ -d /tmp/data/cifar10/train ] || tar xzf ../shared/data/cifar10-train.tar.gz -C /tmp/data
R=/tmp/data/cifar10/train
[ -f "$work/c10/train/shards.json" ] || $N prepare imagefolder $R --out "$work/c10/train" --per-class 4000 \
    --format source --shard-size 500 --prefix train
[ -f "$work/c10/test/shards.json" ] || $N prepare imagefolder $R --out "$work/c10/test" --skip-per-class 4500 \
    --format source --prefix test
T=data/teachers/convnet3bn-cifar10.pt
S="$work/c10-rded-ipc10"
[ -f "$S/manifest.json" ] || $N distill --in "$work/c10/train" --ipc 10 --teacher $T --method rded --out "$S"
[ -f "$work/relabelled" ] || { $N relabel "$S" --teacher $T --epochs 300 --scale 1,1 --full-softlabels \
    --overwrite && touch "$work/relabelled"; }
$N evaluate "$S" --val "$work/c10/test" --labels kd --seeds 3 --arch convnet3 --protocol rded \
    --work "$work/eval-rded" --json > "$work/c10-rded-ipc10.json.tmp"
mv "$work/c10-rded-ipc10.json.tmp" "$work/c10-rded-ipc10.json"
$N evaluate "$S" --val "$work/c10/test" --labels kd --seeds 3 --arch convnet3 --protocol rded --work "$work/eval-rded"
