"""Issue 15, L1 and L2: accuracy per label byte, from the cells of `benchmarks/study.py` runs with codec labels.

For each label kind (one-hot, DBR, full soft labels as KD, and every codec) of one image set: top-1 mean and
std over seeds, the measured label bytes per view (the stores' files as their manifests record them, mean over
the seeds' stores), the share of the KD gain over one-hot it keeps, per seed and paired
((acc - onehot) / (KD - onehot)), and whether it is on the accuracy-per-byte front. Draws the front
(`nrrstore.plots.plot_front`, .png/.pdf/.svg, needs matplotlib) when --plot is given.

    python benchmarks/codec_report.py --work runs/codecs-fm --variant nrr --plot fm-front.png
    python benchmarks/codec_report.py --work runs/codecs-c10 --variant nrr --also nrr-now-l1   # DBR cells named so
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

from nrrstore.format.codecs import codec_bytes
from nrrstore.format.reader import Store
from nrrstore.plots import front_of, plot_front

KIND_BYTES = {"kd": "full", "dbrc:0": "dbr"}  # label kinds that read another codec's bytes


def cells(work: Path, variant: str, ipc: int, also: list[str]) -> dict[str, dict[int, float]]:
    """label kind -> seed -> top-1 (fraction); the ``also`` variants (same images, other student options or
    names) supply the label kinds ``variant`` lacks: the one-hot, DBR and KD references."""
    found: dict[str, dict[str, dict[int, float]]] = {}
    for f in sorted((work / "cells").glob(f"*-ipc{ipc}-e300-s*-*.json")):
        rec = json.loads(f.read_text())
        if rec.get("student", "convnet3") != "convnet3" or rec.get("label_epochs", 300) != 300:
            continue
        found.setdefault(rec["variant"], {}).setdefault(rec["labels"], {})[rec["seed"]] = rec["top1"]
    out = dict(found.get(variant, {}))
    for name in also:
        for kind, per in found.get(name, {}).items():
            out.setdefault(kind, per)
    return out


def bytes_per_view(work: Path, ipc: int, seeds: list[int], prefix: str = "nrr") -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for s in seeds:
        store = work / "stores" / f"{prefix}-ipc{ipc}-s{s}"
        if not (store / "manifest.json").is_file():
            continue
        m = Store(store).manifest
        views = int(m.labels["distances"]["epochs"]) * m.num_images
        for name, b in codec_bytes(m).items():
            per.setdefault(name, []).append(b / views)
    return {k: statistics.fmean(v) for k, v in per.items()}


def table(work: Path, variant: str, ipc: int, also: list[str]) -> list[dict[str, Any]]:
    acc = cells(work, variant, ipc, also)
    seeds = sorted({s for per in acc.values() for s in per})
    sizes = bytes_per_view(work, ipc, seeds)
    one, kd = acc.get("onehot", {}), acc.get("kd", {})
    rows: list[dict[str, Any]] = []
    for kind, per in acc.items():
        vals = [per[s] for s in sorted(per)]
        paired = [s for s in per if s in one and s in kd and kd[s] != one[s]]
        shares = [(per[s] - one[s]) / (kd[s] - one[s]) for s in paired]
        rows.append({"labels": kind, "seeds": sorted(per), "mean": statistics.fmean(vals),
                     "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "bytes_per_view": 0.0 if kind == "onehot" else sizes.get(KIND_BYTES.get(kind, kind)),
                     "kd_gain_share": statistics.fmean(shares) if shares else None,
                     "kd_gain_share_std": statistics.stdev(shares) if len(shares) > 1 else 0.0,
                     "per_seed": {s: per[s] for s in sorted(per)}})
    rows.sort(key=lambda r: (r["bytes_per_view"] is None, r["bytes_per_view"] or 0.0, r["mean"]))
    front = set(front_of(_points(rows)))
    dbr = next((float(r["bytes_per_view"]) for r in rows if r["labels"] == "dbr"), None)
    for r in rows:
        r["on_front"] = r["labels"] in front
        r["x_dbr_bytes"] = float(r["bytes_per_view"]) / dbr if dbr and r["bytes_per_view"] else None
    return rows


def _points(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    return [(str(r["labels"]), float(r["bytes_per_view"]), float(r["mean"]), float(r["std"]))
            for r in rows if r["bytes_per_view"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--variant", default="nrr")
    ap.add_argument("--also", nargs="*", default=[], help="variants supplying the label kinds --variant lacks")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--title", help="the plot's title (default: the work folder's name)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = table(args.work, args.variant, args.ipc, args.also)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.work} ({args.variant}, IPC {args.ipc}): top-1 % mean +- std over seeds; label bytes per view "
          "measured; share of the KD gain over one-hot (paired by seed)")
    print(f"{'labels':10} {'top-1':>15} {'seeds':>6} {'B/view':>8} {'x DBR':>6} {'KD gain kept':>16} front")
    for r in rows:
        b = "-" if r["bytes_per_view"] is None else f"{r['bytes_per_view']:.2f}"
        x = f"{r['x_dbr_bytes']:.2f}" if r["x_dbr_bytes"] else "-"
        share = "-" if r["kd_gain_share"] is None else \
            f"{r['kd_gain_share'] * 100:5.1f} +- {r['kd_gain_share_std'] * 100:4.1f}%"
        print(f"{r['labels']:10} {r['mean'] * 100:7.2f} +- {r['std'] * 100:4.2f} {len(r['seeds']):>6} {b:>8} {x:>6} "
              f"{share:>16} {'*' if r['on_front'] else ''}")
    if args.plot:
        one = next((r["mean"] for r in rows if r["labels"] == "onehot"), None)
        plot_front(_points(rows), one, f"{args.title or args.work.name}: top-1 per label byte, IPC {args.ipc} "
                                       f"({len(rows[0]['seeds'])} seeds, mean +- std)", args.plot, overwrite=True)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
