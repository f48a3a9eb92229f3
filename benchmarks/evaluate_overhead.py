"""Q3: `evaluate` wall time / the same students trained one by one with `train_student`, in one run.

A small real store (embedded Fashion-MNIST, the shipped BatchNorm teacher, IPC 2, DBR labels for
``--epochs`` epochs) is evaluated for every (label kind, seed) cell; the baseline trains exactly those
students, with the same arguments, by calling `nrrstore.train.student.train_student` one after another
(the library call, so process start-up does not count against the baseline). Runs alternate, best of
``--repeat``. With ``--train`` the random-real baseline is added on both sides (the one-by-one side
builds it with the same library calls evaluate uses).

    python benchmarks/evaluate_overhead.py --epochs 30 --seeds 2 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.evaluation import StudentProtocol, evaluate_store, make_baseline
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.train.student import train_student

TRAIN = ROOT / "data" / "fashion-mnist" / "train"
VAL = ROOT / "data" / "fashion-mnist" / "test"
TEACHER = ROOT / "data" / "teachers" / "convnet3bn-fmnist.pt"


def one_by_one(store: Path, work: Path, args: argparse.Namespace, teacher) -> float:
    t0 = time.perf_counter()
    st = Store(store)
    stores = {"store": store}
    for seed in range(args.seeds):
        if args.train:
            stores["random"] = make_baseline(st, str(TRAIN), teacher, seed, args.labels, work / f"random-s{seed}", "cpu")
        for path in stores.values():
            for kind in args.labels:
                train_student(path, str(VAL), epochs=args.epochs, labels=kind, seed=seed, batch_size=10)
    return time.perf_counter() - t0


def with_evaluate(store: Path, work: Path, args: argparse.Namespace, teacher) -> float:
    t0 = time.perf_counter()
    evaluate_store(store, str(VAL), work, train=str(TRAIN) if args.train else None, teacher=teacher,
                   seeds=args.seeds, labels=args.labels, protocol=StudentProtocol(epochs=args.epochs, batch_size=10))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--labels", nargs="+", default=["dbr", "onehot"])
    ap.add_argument("--train", action="store_true", help="include the random-real baseline on both sides")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    teacher = load_teacher(TEACHER)
    tmp = Path(tempfile.mkdtemp(prefix="q3-"))
    try:
        store = tmp / "store"
        distill(str(TRAIN), teacher, store, method_config("nrr", 2, 28, nrr={"iterations": 20}))
        relabel(store, teacher, args.epochs)
        times: dict[str, list[float]] = {"evaluate": [], "one by one": []}
        for r in range(args.repeat):
            for name, fn in (("evaluate", with_evaluate), ("one by one", one_by_one)):
                work = tmp / f"{name.replace(' ', '-')}-{r}"
                work.mkdir()
                times[name].append(fn(store, work, args, teacher))
                shutil.rmtree(work)
        cells = args.seeds * len(args.labels) * (2 if args.train else 1)
        e, b = min(times["evaluate"]), min(times["one by one"])
        print(f"{cells} students x {args.epochs} epochs (IPC 2, batch 10), best of {args.repeat}, torch 1 thread")
        print(f"  evaluate:   {e:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times['evaluate'])})")
        print(f"  one by one: {b:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times['one by one'])})")
        print(f"Q3 ratio evaluate / one by one: {e / b:.3f} (target <= 1.05)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
