"""Issue 14's final CIFAR-10 report from the study's cells: top-1 per image set and label kind, DD-Ranking's
metrics (IOR, HLR, LRS, computed by `nrrstore.evaluation.metrics`, the functions `evaluate` uses) and
`evaluate`'s plot, per IPC and student architecture.

The cells are `benchmarks/study.py`'s (stores distilled from the train part, students scored on the part given
to the study as ``--val``, here the test part); DBR cells are the ``*-l1`` variants (the students' default L_dbr
norm since v0.3), one-hot and KD cells the plain ones. ``--full`` is the JSON of the full-data ConvNet-3
student (`teacher train --json`: its ``val_top1``), which HLR and LRS need.

    python benchmarks/c10_report.py --work runs/final-c10 --full runs/final-c10/full-convnet3-e8.json \\
        --plots benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nrrstore.evaluation import format_table, metrics
from nrrstore.plots import plot_result

IMAGES = {"random": ("random", "random-l1"), "rded": ("rded", "rded-l1"), "nrr": ("nrr", "nrr-now-l1")}
KINDS = ("dbr", "onehot", "kd")


def load_cells(work: Path, ipc: int, student: str) -> dict[str, dict[str, dict[int, float]]]:
    """``{image set: {label kind: {seed: top-1 fraction}}}``."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for f in sorted((work / "cells").glob(f"*-ipc{ipc}-e300-s*.json")):
        rec = json.loads(f.read_text())
        if rec.get("student", "convnet3") != student:
            continue
        for images, (plain, dbr) in IMAGES.items():
            if (rec["labels"] == "dbr" and rec["variant"] == dbr) or (rec["labels"] != "dbr" and rec["variant"] == plain):
                out.setdefault(images, {}).setdefault(rec["labels"], {})[int(rec["seed"])] = float(rec["top1"])
    return out


def _ms(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def dbr_share(per: dict[str, dict[int, float]]) -> list[float]:
    """C3's figure per seed that has all three students: (DBR - one-hot) / (KD - one-hot), the part of KD's gain
    over one-hot labels that two numbers per view keep. Paired by seed, since the three share one store."""
    seeds = sorted(set(per.get("dbr", {})) & set(per.get("onehot", {})) & set(per.get("kd", {})))
    return [(per["dbr"][s] - per["onehot"][s]) / (per["kd"][s] - per["onehot"][s]) for s in seeds
            if per["kd"][s] != per["onehot"][s]]


def report(cells: dict[str, dict[str, dict[int, float]]], full: float | None, ipc: int, student: str,
           plots: Path | None) -> list[str]:
    lines = []
    for images in ("nrr", "rded"):
        if images not in cells or "random" not in cells:
            continue
        sets = {"store": cells[images], "random": cells["random"]}
        kinds = [k for k in KINDS if k in cells[images] or k in cells["random"]]
        result = {
            "labels": kinds, "ipc": ipc, "val": "the CIFAR-10 test part",
            "seeds": max(len(v) for per in sets.values() for v in per.values()),
            "protocol": {"arch": student, "epochs": 300},
            "table": {name: {k: _ms(list(per[k].values())) for k in kinds if k in per} for name, per in sets.items()},
            "metrics": metrics(sets, full, "dbr"),
        }
        lines += [f"### {images} vs random real, IPC {ipc}, {student} students", "```",
                  format_table(result).replace("distilled store", f"{images} images".ljust(15))]
        counts = {f"{images if name == 'store' else name} {k}": len(per[k]) for name, per in sets.items()
                  for k in kinds if k in per}
        if len(set(counts.values())) > 1:  # a std over fewer seeds than the title says must not pass unnoticed
            lines.append("seeds per cell: " + ", ".join(f"{key} {n}" for key, n in counts.items()))
        for name, per in ((images, cells[images]), ("random", cells["random"])):
            shares = [100 * x for x in dbr_share(per)]
            if shares:
                sd = f" +- {statistics.stdev(shares):.1f}" if len(shares) > 1 else ""
                lines.append(f"DBR keeps {statistics.fmean(shares):.1f}{sd}% of the KD gain over one-hot on {name} "
                             f"images ({len(shares)} seed(s): " + ", ".join(f"{x:.1f}" for x in shares) + ")")
        lines.append("```")
        if plots is not None:
            name = f"issue14-c10-ipc{ipc}-{student}-{images}.png"
            plot_result(result, plots / name, overwrite=True)
            lines.append(f"plot: `benchmarks/results/{name}`")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--full", type=Path, help="teacher train --json output of the full-data student")
    ap.add_argument("--plots", type=Path)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--students", nargs="+", default=["convnet3", "resnet18"])
    args = ap.parse_args()
    full = None
    if args.full is not None and args.full.is_file():
        full = float(json.loads(args.full.read_text())["val_top1"])
        print(f"full-data ConvNet-3 student (hard labels, train part): {full * 100:.2f}% on the test part")
    for student in args.students:
        for ipc in args.ipc:
            cells = load_cells(args.work, ipc, student)
            if cells:
                print("\n".join(report(cells, full if student == "convnet3" else None, ipc, student, args.plots)))


if __name__ == "__main__":
    main()
