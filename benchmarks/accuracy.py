"""Q1/Q2: student accuracy on real held-out images, one student protocol for every cell.

Rows: distilled stores at the same IPC, made by ``nrrstore distill --method nrr|rded|random`` (NRR-DD,
RDED-style, random real images), each in a subprocess through the CLI. Columns: the labels the
student learns from, all computed here by :func:`nrrstore.labels.relabel.relabel` with the same
teacher, epochs and augmentation: DBR distances, full soft labels (KD), one-hot. Every cell trains
``--seeds`` students (:func:`nrrstore.train.student.train_student`) and reports mean +- std top-1.

Q1 target: NRR-DD best (DBR column). Q2 target: on the NRR-DD store, DBR keeps >= 60% of the KD gain
over one-hot: (DBR - onehot) / (KD - onehot) >= 0.6. ``--int8`` adds a DBR column from int8
distances (P3's opt-in mode; target within 0.5 pt of fp16).

    python benchmarks/accuracy.py --teacher T.pt --train TRAIN_SHARDS --val TEST_SHARDS --ipc 10 --epochs 300
    python benchmarks/accuracy.py ... --store nrr=path/to/made/store      # reuse a store instead of distilling

Results also go to ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.train.student import train_student

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "accuracy"
METHODS = {"nrr": "NRR-DD", "rded": "RDED-style", "random": "random real"}
LABELS = ("dbr", "kd", "onehot")

# `nrrstore` itself when installed, else the CLI package from this checkout (as tests/conftest.py maps it).
_CLI_SHIM = (
    "import importlib.util, sys; root = sys.argv.pop(1); sys.path.insert(0, root); "
    "spec = importlib.util.spec_from_file_location('nrrstore_cli', root + '/cli/__init__.py', "
    "submodule_search_locations=[root + '/cli']); m = importlib.util.module_from_spec(spec); "
    "sys.modules['nrrstore_cli'] = m; spec.loader.exec_module(m); "
    "from nrrstore_cli.main import main; sys.argv[0] = 'nrrstore'; main()"
)


def cli() -> list[str]:
    exe = shutil.which("nrrstore")
    return [exe] if exe else [sys.executable, "-c", _CLI_SHIM, str(ROOT)]


def distill_store(method: str, args: argparse.Namespace, out: Path) -> Path:
    cmd = cli() + ["distill", "--in", args.train, "--ipc", str(args.ipc), "--teacher", str(args.teacher),
                   "--out", str(out), "--method", method, "--seed", str(args.distill_seed), "--device", args.device,
                   "--overwrite", *args.distill_args]
    print("$ nrrstore " + " ".join(cmd[len(cli()):]), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run(cmd, check=True, env=env)
    return out


def prepare(name: str, source: Path, args: argparse.Namespace, teacher: Any, precision: str) -> Path:
    """A copy of the store with this benchmark's labels (fp16 + soft labels, or int8)."""
    dst = args.work / f"{name}-{precision}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(source, dst)
    relabel(dst, teacher, args.relabel_epochs, precision=precision, full_softlabels=precision == "fp16",
            seed=args.aug_seed, overwrite=True, device=args.device, batch_size=256)
    return dst


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * 100
    return f"{mean:5.2f} +- {statistics.stdev(values) * 100:4.2f}" if len(values) > 1 else f"{mean:5.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--train", default=str(ROOT / "data/fashion-mnist/train"), help="real training shards (distill input)")
    ap.add_argument("--val", default=str(ROOT / "data/fashion-mnist/test"), help="real held-out shards")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--labels", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--store", action="append", default=[], metavar="METHOD=PATH",
                    help="use this store for METHOD instead of distilling one")
    ap.add_argument("--distill-args", nargs=argparse.REMAINDER, default=[], help="extra flags for `nrrstore distill` (last)")
    ap.add_argument("--arch", default="convnet3")
    ap.add_argument("--epochs", type=int, default=300, help="student epochs")
    ap.add_argument("--relabel-epochs", type=int, default=None, help="stored epochs (default: --epochs; fewer cycle)")
    ap.add_argument("--seeds", type=int, default=3, help="students per cell")
    ap.add_argument("--int8", action="store_true", help="also train DBR students on int8 distances")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--distill-seed", type=int, default=0)
    ap.add_argument("--aug-seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args(argv)
    args.relabel_epochs = args.relabel_epochs or args.epochs
    args.work.mkdir(parents=True, exist_ok=True)
    given = dict(s.split("=", 1) for s in args.store)
    unknown = set(given) - set(METHODS)
    if unknown:
        sys.exit(f"--store names unknown methods {sorted(unknown)}; use {list(METHODS)}")
    teacher = load_teacher(args.teacher, args.device)
    warnings.simplefilter("ignore", UserWarning)  # --relabel-epochs < --epochs cycles on purpose

    t0 = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, int] = {}
    for method in args.methods:
        source = Path(given[method]) if method in given else distill_store(method, args, args.work / f"{method}-distilled")
        stores = {"fp16": prepare(method, source, args, teacher, "fp16")}
        columns = [(label, "fp16") for label in args.labels]
        if args.int8 and "dbr" in args.labels:
            stores["int8"] = prepare(method, source, args, teacher, "int8")
            columns.append(("dbr", "int8"))
        n = Store(stores["fp16"]).num_images
        sizes[method] = n
        for label, precision in columns:
            key = f"{label}-int8" if precision == "int8" else label
            for seed in range(args.seeds):
                r = train_student(stores[precision], args.val, arch=args.arch, epochs=args.epochs, labels=label,
                                  seed=seed, device=args.device, workers=args.workers,
                                  cycle=args.relabel_epochs < args.epochs)
                results.setdefault(method, {}).setdefault(key, []).append(r["top1"])
                print(f"{METHODS[method]:12} {key:10} seed {seed}: top-1 {r['top1'] * 100:.2f}% "
                      f"({n} images, {time.perf_counter() - t0:.0f} s so far)", flush=True)

    keys = [label for label in args.labels] + (["dbr-int8"] if args.int8 and "dbr" in args.labels else [])
    print(f"\nstudent {args.arch}, {args.epochs} epochs, {args.seeds} seed(s); top-1 % on {args.val}")
    print(f"{'images':24}" + "".join(f"{k:>18}" for k in keys))
    for method, cells in results.items():
        name = f"{METHODS[method]} ({sizes[method]})"
        print(f"{name:24}" + "".join(f"{fmt(cells.get(k, [])):>18}" for k in keys))
    mean = {m: {k: statistics.fmean(v) for k, v in c.items()} for m, c in results.items()}
    if "dbr" in args.labels and len(mean) > 1:
        best = max(mean, key=lambda m: mean[m]["dbr"])
        print(f"Q1: best with DBR labels: {METHODS[best]} (target: NRR-DD)")
    for m, c in mean.items():
        if {"dbr", "kd", "onehot"} <= set(c) and c["kd"] != c["onehot"]:
            kept = (c["dbr"] - c["onehot"]) / (c["kd"] - c["onehot"])
            print(f"Q2 ({METHODS[m]}): DBR keeps {kept * 100:.0f}% of the KD gain over one-hot (target >= 60%)")
        if "dbr-int8" in c:
            print(f"int8 ({METHODS[m]}): DBR int8 - fp16 = {(c['dbr-int8'] - c['dbr']) * 100:+.2f} pt (target within 0.5)")
    (args.work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "top1": results}, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
