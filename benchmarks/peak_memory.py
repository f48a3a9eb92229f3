"""Issue 18, R4: no command's peak memory depends on --epochs beyond the data it actually writes.

Each command runs twice in a fresh process, with ``--epochs`` E and 10 x E, on the embedded Fashion-MNIST data;
the peak resident set size of the process (``ru_maxrss`` of the child) is printed beside the ratio. Labels are
streamed one epoch (relabel) or one chunk (convert) at a time and students read one epoch at a time, so the
ratio should stay near 1 however many epochs are asked for.

    python benchmarks/peak_memory.py                 # E = 20
    python benchmarks/peak_memory.py --epochs 5      # a quick check
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "peak_memory"
TEACHER = ROOT / "data" / "teachers" / "convnet3bn-fmnist.pt"
TRAIN, TEST = ROOT / "data" / "fashion-mnist" / "train", ROOT / "data" / "fashion-mnist" / "test"


def peak_mb(args: list[str]) -> float:
    """Peak RSS (MB) of ``nrrstore ARGS`` in a child process (the child's own maximum, as getrusage reports)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = ("import resource, sys; from nrrstore_cli.main import app\n"
            "try:\n    app(sys.argv[1:], standalone_mode=False)\nfinally:\n"
            "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return int(line.split()[1]) / 1024  # Linux: kilobytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    store = WORK / "s"
    subprocess.run([sys.executable, "-m", "nrrstore_cli.main", "distill", "--in", str(TRAIN), "--ipc", "10",
                    "--method", "random", "--teacher", str(TEACHER), "--relabel-epochs", "1", "--out", str(store)],
                   check=True, capture_output=True)
    e = args.epochs
    rows = []
    for name, make in [
        ("relabel (every codec, full soft labels)", lambda n: ["relabel", str(store), "--teacher", str(TEACHER),
                                                               "--epochs", str(n), "--labels",
                                                               "dbr,topk:2,dbrc:1,full", "--overwrite"]),
        ("train-student (dbrc:1, cycled labels)", lambda n: ["train-student", str(store), "--val", str(TEST),
                                                             "--epochs", str(n), "--labels", "dbrc:1", "--cycle"]),
    ]:
        if name.startswith("train-student"):  # labels for E epochs, students for E and 10 E (cycled)
            peak_mb(["relabel", str(store), "--teacher", str(TEACHER), "--epochs", str(e), "--labels",
                     "dbr,dbrc:1", "--overwrite"])
        small, large = peak_mb(make(e)), peak_mb(make(10 * e))
        rows.append((name, small, large))
    print(f"peak RSS (MB), --epochs {e} vs {10 * e}, one torch thread; target: ratio ~1 (R4)")
    for name, small, large in rows:
        print(f"  {name:42} {small:8.1f} {large:8.1f}  ratio {large / small:.3f}")


if __name__ == "__main__":
    main()
