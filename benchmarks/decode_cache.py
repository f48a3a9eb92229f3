"""Issue 28, decode once: JPEG decodes and loader throughput over several epochs, with the decode cache that the
loader's workers share against the per-process cache it replaces (the baseline) and against no cache.

One store of real photos (Imagenette at 128 px, JPEG), one-hot labels (no label files read: the image path
alone), batch ``--batch-size``, ``--epochs`` epochs per pass, workers 0, 1 and 2 (one torch thread each). For
each mode and worker count it prints the decodes over the pass (the store has N images: N is the floor) and the
images/s of the epochs after the first (where a cache can help), with the ratio to the per-process cache at the
same worker count. The per-process mode is the code before issue 28 (the shared region switched off in this
process, so its forked workers have none either).

    python benchmarks/decode_cache.py STORE [--epochs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance

from nrrstore.format.reader import Store
from nrrstore.replay import stream
from nrrstore.train.loader import make_loader

MODES = {"shared": 256, "per-process": 256, "none": 0}
"""Decode-cache mode -> cache_mb (256 MB: the loader's default; the store fits in it)."""


def one_pass(store: str, mode: str, workers: int, epochs: int, batch_size: int) -> dict[str, Any]:
    create = stream.SharedPixels.create
    if mode == "per-process":
        stream.SharedPixels.create = staticmethod(lambda *a: None)  # type: ignore[method-assign,assignment]
    try:
        loader = make_loader(store, 0, batch_size, "onehot", workers=workers, num_epochs=epochs,
                             cache_mb=MODES[mode])
        per_epoch = len(loader) // epochs
        marks = [time.perf_counter()]
        for i, _ in enumerate(loader, start=1):
            if i % per_epoch == 0:
                marks.append(time.perf_counter())
    finally:
        stream.SharedPixels.create = create  # type: ignore[method-assign]
    n = Store(store).manifest.num_images
    later = marks[-1] - marks[1]
    return {"mode": mode, "workers": workers, "decoded": loader.decoded, "images": n, "epochs": epochs,
            "first_epoch_s": round(marks[1] - marks[0], 3),
            "later_images_per_s": round(n * (epochs - 1) / later, 1) if later > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [one_pass(args.store, mode, w, args.epochs, args.batch_size) for w in args.workers for mode in MODES]
    base = {r["workers"]: r["later_images_per_s"] for r in rows if r["mode"] == "per-process"}
    print(f"{'mode':12} {'workers':>7} {'decoded':>9} {'epoch 1 s':>9} {'later img/s':>11} {'vs per-process':>14}")
    for r in rows:
        ratio = r["later_images_per_s"] / base[r["workers"]] if base[r["workers"]] else float("nan")
        r["vs_per_process"] = round(ratio, 2)
        print(f"{r['mode']:12} {r['workers']:>7} {r['decoded']:>5}/{r['images'] * r['epochs']:<4}"
              f"{r['first_epoch_s']:>9} {r['later_images_per_s']:>11} {ratio:>13.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"provenance": provenance(1), "store": str(args.store), "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
