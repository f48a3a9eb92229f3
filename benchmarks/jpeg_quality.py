"""Which image encoding should ``distill`` default to at >= 128 px? Store bytes against student accuracy.

A small, real measurement (no 128 px labelled set can be downloaded here):
- data: Fashion-MNIST upscaled to ``--size`` (128) px with PIL's bicubic filter, ``--per-class``
  training images per class (``/work/fm/train``) and the first ``--test`` test images
  (``/work/fm/test``), written as PNG shards;
- teacher: ConvNet-3 (width 32, BatchNorm) trained ``--teacher-epochs`` epochs on those training images;
- stores: ``distill --method rded --ipc 10`` (factor 2 at 128 px: 4 stitched patches per image;
  RDED's selection, no refinement, so the images are identical before encoding), written as PNG
  and as JPEG at each ``--qualities``; DBR labels for ``--relabel-epochs`` epochs, computed by
  relabel from each store's own decoded images;
- students: ConvNet-3 (width ``--student-width``), ``--student-epochs`` epochs, DBR labels,
  ``--seeds`` seeds, top-1 on the test images.

    python benchmarks/jpeg_quality.py                       # about 20 minutes on 2 loaded cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.sources.prepare import write_shards
from nrrstore.sources.shards import iter_samples
from nrrstore.train.student import train_student
from nrrstore.train.teacher_job import train_teacher

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "jpeg_quality"
FM = Path("/work/fm")


def upscaled(split: str, size: int, per_class: int | None, limit: int | None) -> list[tuple[str, np.ndarray, int]]:
    src = FM / split if (FM / split).exists() else ROOT / "data/fashion-mnist" / split
    counts: dict[int, int] = {}
    out = []
    for s in iter_samples(src):
        if per_class is not None and counts.get(s.label, 0) >= per_class:
            continue
        counts[s.label] = counts.get(s.label, 0) + 1
        out.append((s.key, np.asarray(Image.fromarray(s.image).resize((size, size), Image.Resampling.BICUBIC)), s.label))
        if limit is not None and len(out) >= limit:
            break
        if per_class is not None and len(counts) == 10 and min(counts.values()) >= per_class:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--relabel-epochs", type=int, default=30)
    ap.add_argument("--student-epochs", type=int, default=30)
    ap.add_argument("--student-width", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--qualities", type=int, nargs="+", default=[95, 90, 75])
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    names = (ROOT / "data/fashion-mnist/classes.txt").read_text().splitlines()
    WORK.mkdir(parents=True, exist_ok=True)  # outputs' parent folders must exist
    train, test = WORK / "train", WORK / "test"
    if not (train / "shards.json").exists():
        write_shards(upscaled("train", args.size, args.per_class, None), train, names, overwrite=True)
        write_shards(upscaled("test", args.size, None, args.test), test, names, prefix="test", overwrite=True)
    teacher_path = WORK / "teacher.pt"
    if not teacher_path.exists():
        r = train_teacher(str(train), "convnet3", teacher_path, epochs=args.teacher_epochs, lr=0.05, seed=0,
                          arch_kwargs={"width": 32, "norm": "batch"}, val=str(test))
        print(f"teacher: top-1 {r.get('val_top1', r.get('top1'))} ({time.perf_counter() - t0:.0f} s)", flush=True)
    teacher = load_teacher(teacher_path)
    rows: list[dict[str, Any]] = []
    for fmt, q in [("png", None)] + [("jpg", q) for q in args.qualities]:
        name = fmt if q is None else f"{fmt}{q}"
        store = WORK / f"store-{name}"
        if store.exists():
            shutil.rmtree(store)
        cfg = method_config("rded", args.ipc, args.size, cidd={"mipc": 40, "num_crop": 2}, image_format=fmt, quality=q)
        distill(str(train), teacher, store, cfg)
        relabel(store, teacher, args.relabel_epochs)
        m = Store(store).manifest
        image_bytes = sum(f.bytes for f in m.files if f.kind == "images")
        accs = []
        for seed in range(args.seeds):
            res = train_student(store, str(test), arch="convnet3", arch_kwargs={"width": args.student_width},
                                epochs=args.student_epochs,
                                labels="dbr", seed=seed)
            accs.append(100 * res["top1"])
        rows.append({"format": name, "quality": m.image.quality, "image_bytes": image_bytes,
                     "bytes_per_image": image_bytes / m.num_images, "top1": accs})
        print(f"{name:6s}: {image_bytes / m.num_images:8.0f} B/image (shards), top-1 "
              f"{statistics.fmean(accs):.2f} ± {statistics.pstdev(accs):.2f} over {len(accs)} seed(s) {accs} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    png = rows[0]
    print("\nvs png: " + "; ".join(f"{r['format']} {r['image_bytes'] / png['image_bytes']:.2f}x bytes, "
                                   f"{statistics.fmean(r['top1']) - statistics.fmean(png['top1']):+.2f} pt"
                                   for r in rows[1:]))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
