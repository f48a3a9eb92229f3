"""R2: a reader running beside an overwriting relabel, in N timed trials.

Each trial copies a labelled store, starts ``nrrstore relabel --overwrite`` (another augmentation seed) in a
subprocess after a random delay, and meanwhile reads every epoch of the store with `make_loader` (a short sleep
per batch stands for a training step). The batches read are compared with both versions' labels; a trial ends
in one of: ``old`` (every batch from the labels the reader opened), ``new`` (the writer finished before the
first read), ``refused`` (an `NrrError`, one line) or ``MIXED`` (the failure this guards against). The target:
no MIXED trial, and every refusal one line.

    python benchmarks/reader_vs_relabel.py --trials 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nrrstore.errors import NrrError
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import make_loader
from tests._builders import write_fmnist_store
from tests._teacher import teacher_path

EPOCHS, BATCH = 12, 20


def _read(store: Path, workers: int, step_s: float) -> list[np.ndarray]:
    out = []
    for batch in make_loader(store, 0, BATCH, "dbr", num_epochs=EPOCHS, workers=workers):
        out.append(batch["d_org"].numpy().copy())
        time.sleep(step_s)
    return out


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--step-s", type=float, default=0.2, help="sleep per batch (a training step)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    teacher = load_teacher(teacher_path())
    with tempfile.TemporaryDirectory() as tmp:
        base, new = Path(tmp) / "base", Path(tmp) / "new"
        write_fmnist_store(base, per_class=10, shard_size=25)
        relabel(base, teacher, EPOCHS, AugRecipe(size=28, group_size=10, seed=1), epochs_per_file=1)
        shutil.copytree(base, new)
        relabel(new, teacher, EPOCHS, AugRecipe(size=28, group_size=10, seed=2), epochs_per_file=1, overwrite=True)
        want_old, want_new = _read(base, 0, 0.0), _read(new, 0, 0.0)
        read_s = len(want_old) * args.step_s
        outcomes: dict[str, int] = {}
        lines_ok = True
        for t in range(args.trials):
            store = Path(tmp) / f"t{t}"
            shutil.copytree(base, store)
            delay = rnd.uniform(0.0, 0.6 * read_s)  # the writer (about 2 s to start) lands inside the read
            cmd = [sys.executable, "-m", "nrrstore_cli.main", "relabel", str(store), "--teacher", str(teacher_path()),
                   "--epochs", str(EPOCHS), "--seed", "2", "--epochs-per-file", "1", "--overwrite"]
            writer = subprocess.Popen(["bash", "-c", f"sleep {delay:.3f}; exec \"$@\"", "_", *cmd],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                got = _read(store, args.workers, args.step_s)
                outcome = "old" if _same(got, want_old) else "new" if _same(got, want_new) else "MIXED"
            except NrrError as exc:
                outcome = "refused"
                lines_ok &= "\n" not in str(exc)
            _, err = writer.communicate(timeout=600)
            if writer.returncode != 0:
                outcome += f" (writer failed: {err.strip().splitlines()[-1] if err.strip() else writer.returncode})"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            print(f"trial {t + 1}/{args.trials}: writer after {delay:.2f} s of a {read_s:.1f} s read: {outcome}",
                  flush=True)
    mixed = sum(v for k, v in outcomes.items() if k.startswith("MIXED"))
    print(json.dumps({"trials": args.trials, "outcomes": outcomes, "mixed": mixed, "refusals_one_line": lines_ok,
                      "R2_met": mixed == 0 and lines_ok}, indent=2))


if __name__ == "__main__":
    main()
