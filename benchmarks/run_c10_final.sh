#!/usr/bin/env bash
# Issue 14's final CIFAR-10 runs, as they were run (benchmarks/RESULTS.md, "Issue 14"): first the validation
# seeds that choose the students' DBR default (L_dbr with the l1 norm), then the test-part report: stores
# distilled from the train part, students scored on the test part, 3 seeds. Two chains of benchmarks/study.py,
# one thread each, resumable. Usage:
#   nohup bash benchmarks/run_c10_final.sh C10_DIR VAL_WORK TEST_WORK > final.log 2>&1 &
# C10_DIR holds train/, val/ and test/ made as README's CIFAR-10 recipe says.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 val=$2 test=$3
S="benchmarks/study.py --teacher data/teachers/convnet3bn-cifar10.pt --train $data/train --threads 1"
V="$S --val $data/val --work $val"
T="$S --val $data/test --work $test"
chain() {
  p="--part $1/2"
  # validation: second seeds of the l1 objective on RDED's and random images, and l1 on NRR-DD's images
  .venv/bin/python $V --ipc 10 --seeds 2 --labels dbr $p --variants rded-l1 random-l1 nrr-now-l1
  # test part, IPC 10 and 1: DBR with the chosen objective, one-hot, KD
  for ipc in 10 1; do
    .venv/bin/python $T --ipc $ipc --seeds 3 --labels dbr $p --variants random-l1 rded-l1 nrr-now-l1
    .venv/bin/python $T --ipc $ipc --seeds 3 --labels onehot kd $p --variants random rded nrr
  done
  # the full-data reference for evaluate --full-acc (HLR, LRS): ConvNet-3 (GroupNorm, the students' arch) on
  # the whole train part with hard labels, the teacher's recipe at 8 epochs (the teacher had 20; as run, it ran
  # beside the chains as a third process, about 35 minutes, after a 12-epoch run was lost to an OOM event)
  if [ "$1" = 1 ] && [ ! -f "$test/full-convnet3-e8.json" ]; then
    OMP_NUM_THREADS=1 .venv/bin/nrrstore teacher train --in $data/train --arch convnet3 --epochs 8 --lr 0.05 \
        --flip --crop-pad 4 --val $data/test --out "$test/full-convnet3-e8.pt" --overwrite --json > "$test/full.tmp" \
      && mv "$test/full.tmp" "$test/full-convnet3-e8.json"
  fi
  # test part, IPC 50: DBR with the chosen objective (5x the student cost of IPC 10), first seed
  .venv/bin/python $T --ipc 50 --seeds 1 --labels dbr $p --variants random-l1 rded-l1 nrr-now-l1
  # cross-architecture: the same IPC-10 stores, ResNet-18 students (ImageNet stem: cheap at 32 px); as run,
  # seed 0 in one session, seeds 1 and 2 in a later one (stores rebuilt byte for byte by distill --seed s)
  .venv/bin/python $T --ipc 10 --seeds 3 --labels dbr $p --variants random-l1 rded-l1 nrr-now-l1 --student resnet18
  .venv/bin/python $T --ipc 10 --seeds 3 --labels onehot $p --variants random rded nrr --student resnet18
  # IPC 50: the other seeds of DBR, then one-hot and KD (C3 at IPC 50). As run, over three sessions: random
  # and RDED's one-hot and KD seed 0 in one, seeds 1 and 2 in the next; NRR-DD's seeds 0 and 1 in one, seed 2
  # in a later one from its store rebuilt by distill --seed 2 at 2 threads (the original had 1: the same
  # selection, pixels a few levels apart), whose DBR student was trained again into another --work
  .venv/bin/python $T --ipc 50 --seeds 3 --labels dbr $p --variants random-l1 rded-l1 nrr-now-l1
  .venv/bin/python $T --ipc 50 --seeds 3 --labels onehot kd $p --variants random rded nrr
}
chain 0 & a=$!
chain 1 & b=$!
wait $a; wait $b
