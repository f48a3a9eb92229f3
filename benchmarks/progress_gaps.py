"""U3 (issue 17): does every long command show progress at least every 5 seconds?

Runs ten long commands on real data with stderr on a pseudo-terminal (as a user at a terminal sees them),
timestamps every redraw of the bar, and reports per command the longest time without the bar's counts
(`12/200`) moving: from the first frame to the first move, between moves, and from the last move to the
exit. A frame that only ticks the elapsed-time column does not count as progress. The baseline beside each
figure is the command's own length: a bar that never moved would show a gap that long.

    python benchmarks/progress_gaps.py --images /tmp/data/cifar10/train     # README's CIFAR-10 tree
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COUNT = re.compile(rb"\x1b\[32m(\d+)(?:/(\d+))? *\x1b\[0m")  # the count column (green): `12/200`, or `12 `
# (a bar without a total pads its count with spaces: missing those hid every move of a test pass)
FM = ROOT / "data" / "fashion-mnist"
TEACHER = ROOT / "data" / "teachers" / "convnet3bn-fmnist.pt"


def watch(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` with stderr on a pty; return its wall time, frames and the longest gap between moves."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "120"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env=env)
    os.close(slave)
    frames, moves, last, first = 0, [], None, None
    states: list[bytes] = []  # the counts after each move, to say where the longest gap was
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        now = time.monotonic()
        counts = tuple(COUNT.findall(data))
        if counts:
            frames += 1
            first = now if first is None else first
            if counts != last:
                moves.append(now)
                states.append(b" ".join(b"/".join(c) for c in counts))
                last = counts
    rc = proc.wait()
    end = time.monotonic()
    os.close(master)
    if rc != 0:
        sys.exit(f"{' '.join(cmd)}: exit {rc}")
    marks = [first or t0, *moves, end]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    at = gaps.index(max(gaps))
    where = "before the first move" if at == 0 else f"after {states[at - 1].decode()}"
    return {"seconds": end - t0, "frames": frames, "moves": len(moves), "max_gap_s": max(gaps),
            "where": where if at < len(gaps) - 1 else f"{where}, to the exit", "before_first_frame_s": (first or end) - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="an image-folder tree (README's CIFAR-10 recipe)")
    ap.add_argument("--limit", type=float, default=5.0, help="the target: seconds without progress")
    ap.add_argument("--only", nargs="+", default=[], help="run only these commands (and the ones they need first)")
    args = ap.parse_args()
    nrr = [str(ROOT / ".venv" / "bin" / "nrrstore")] if (ROOT / ".venv/bin/nrrstore").exists() else ["nrrstore"]
    work = Path(tempfile.mkdtemp(prefix="progress-gaps-"))
    w = str(work)
    cmds = {
        "prepare imagefolder": ["prepare", "imagefolder", str(args.images), "--out", f"{w}/c10", "--per-class", "1500",
                                "--shard-size", "500"],
        "teacher train": ["teacher", "train", "--in", str(FM / "train"), "--arch", "convnet3", "--epochs", "4",
                          "--out", f"{w}/t.pt"],
        "teacher eval": ["teacher", "eval", "--teacher", str(ROOT / "data/teachers/convnet3bn-cifar10.pt"),
                         "--in", f"{w}/c10"],
        "distill (nrr)": ["distill", "--in", str(FM / "train"), "--ipc", "10", "--teacher", str(TEACHER),
                          "--relabel-epochs", "0", "--out", f"{w}/nrr"],
        "distill (rded)": ["distill", "--in", str(FM / "train"), "--ipc", "10", "--teacher", str(TEACHER),
                           "--method", "rded", "--relabel-epochs", "0", "--out", f"{w}/rded"],
        "relabel": ["relabel", f"{w}/nrr", "--teacher", str(TEACHER), "--epochs", "300", "--labels", "dbr,full"],
        "train-student": ["train-student", f"{w}/nrr", "--val", str(FM / "test"), "--epochs", "40",
                          "--batch-size", "10"],
        "evaluate": ["evaluate", f"{w}/nrr", "--val", str(FM / "test"), "--train", str(FM / "train"),
                     "--teacher", str(TEACHER), "--labels", "dbr", "--seeds", "1", "--epochs", "20",
                     "--batch-size", "10", "--work", f"{w}/ev"],
        "verify --teacher": ["verify", f"{w}/nrr", "--teacher", str(TEACHER)],
        "inspect shards --grid": ["inspect", f"{w}/c10", "--grid", f"{w}/sheet.png"],
    }
    print(f"{'command':24}{'seconds':>9}{'frames':>8}{'moves':>7}{'longest gap s':>15}  target <= {args.limit:g} s")
    worst = 0.0
    try:
        needs = {"teacher eval": ["prepare imagefolder"], "inspect shards --grid": ["prepare imagefolder"],
                 "relabel": ["distill (nrr)"], "train-student": ["distill (nrr)", "relabel"],
                 "evaluate": ["distill (nrr)", "relabel"], "verify --teacher": ["distill (nrr)", "relabel"]}
        wanted = set(args.only or cmds) | {d for n in args.only for d in needs.get(n, [])}
        for name, cmd in cmds.items():
            if name not in wanted:
                continue
            r = watch([*nrr, *cmd], work)
            worst = max(worst, float(r["max_gap_s"]))
            print(f"{name:24}{r['seconds']:9.1f}{r['frames']:8d}{r['moves']:7d}{r['max_gap_s']:15.2f}  ({r['where']})",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"U3: longest time without progress over {len(wanted)} commands: {worst:.2f} s "
          f"({'met' if worst <= args.limit else 'missed'}; target {args.limit:g} s)")


if __name__ == "__main__":
    main()
