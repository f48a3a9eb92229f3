#!/usr/bin/env bash
# Issue 27, N3 on Imagenette: RDED's evaluation (`--protocol rded`) of the `rded` preset at IPC 10, 128 px, against
# RDED's published 63.2 +- 0.7 (ConvNet-5 student at 128 px; RDED's teacher is a ConvNet-5 of 89.6%, ours the
# shipped ResNet-18 of 78.9%). Resumable: rerun the same command after a stop.
#   nohup bash benchmarks/run_rded_protocol_inet.sh INET_DIR WORK > rded-inet.log 2>&1 &
# INET_DIR holds train/ and test/ (README's "Imagenette at 128 px" recipe). RDED's views at factor 2 are
# random-resized crops of 1/2 to all of the image (`--scale 0.5,1`), flips and CutMix; 300 epochs of KD at T 20.
# About an hour of the 2 cores per seed (a ConvNet-5 keeps 128 channels at 128 px).
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 work=$2
N=".venv/bin/nrrstore"
T=data/teachers/resnet18-imagenette.pt
S="$work/inet-rded-ipc10"
mkdir -p "$work"
[ -f "$S/manifest.json" ] || $N distill --in "$data/train" --ipc 10 --teacher $T --method rded --relabel-epochs 0 \
    --out "$S"
[ -f "$work/relabelled" ] || { $N relabel "$S" --teacher $T --epochs 300 --scale 0.5,1 --full-softlabels \
    --overwrite && touch "$work/relabelled"; }
$N evaluate "$S" --val "$data/test" --labels kd --seeds "${SEEDS:-1}" --arch convnet5 --protocol rded \
    --work "$work/eval-rded" --json > "$work/inet-rded-ipc10.json.tmp"
mv "$work/inet-rded-ipc10.json.tmp" "$work/inet-rded-ipc10.json"
$N evaluate "$S" --val "$data/test" --labels kd --seeds "${SEEDS:-1}" --arch convnet5 --protocol rded --work "$work/eval-rded"
