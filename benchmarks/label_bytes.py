"""P3: label bytes on disk per (image, epoch) view, augmentation metadata included.

Stores of real Fashion-MNIST images are relabelled by a trained teacher (real distances compress
differently from random numbers) in several label layouts, all measured in this run:
- ``fp16`` seeded (the default store): target <= 4.5 B/view, i.e. >= 440x smaller than fp16 full
  soft labels at 1000 classes (2000 B/view, the SRe2L/FKD label size at ImageNet scale);
- ``int8`` seeded (opt-in): target <= 2.5 B/view;
- ``fp32`` seeded, and ``fp16`` explicit (each view's crop, flip, partner, lambda and box stored as
  columns, what converted SRe2L files carry), for reference;
- the full soft labels that nrrstore itself writes (fp16 zarr, zstd) at this store's 10 classes.
Bytes per view = (distance Parquet files + the manifest's ``augmentation`` and ``labels`` sections as
JSON) / (images x epochs). Per-file and per-row-group overhead is included, so small stores with
many epochs pay a little more per view than large ones: two sizes are measured.

    python benchmarks/label_bytes.py                         # 500 x 300 and 5000 x 30 views
    python benchmarks/label_bytes.py --configs 100x20 --teacher-images 1000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import ROOT, fashion_mnist  # the benchmark next door

from nrrstore.format.reader import Store
from nrrstore.format.writer import StoreWriter
from nrrstore.labels.relabel import relabel
from nrrstore.models import build_model, load_teacher, save_teacher
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.teacher import train_classifier

WORK = ROOT / "benchmarks" / "_work" / "label_bytes"
MEAN, STD = 0.286, 0.353
FULL_1000_FP16 = 1000 * 2  # bytes per view of fp16 soft labels at 1000 classes


def quick_teacher(path: Path, images: int, width: int = 32) -> Path:
    """A ConvNet-3 trained for one epoch on the first `images` Fashion-MNIST images (~85% at 10000)."""
    x_np, y_np, classes = fashion_mnist(images)
    x = (torch.from_numpy(x_np).float().div(255).unsqueeze(1) - MEAN) / STD
    y = torch.from_numpy(y_np)
    model = build_model("convnet3", 10, 1, 28, seed=0, width=width)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [(x[order[i:i + 128]], y[order[i:i + 128]]) for i in range(0, len(x), 128)]

    train_classifier(model, batches, epochs=1, lr=0.05, seed=0)
    save_teacher(path, model, {"arch": "convnet3", "arch_kwargs": {"width": width}, "num_classes": 10,
                               "in_channels": 1, "image_size": 28, "classes": classes,
                               "normalization": {"mean": [MEAN], "std": [STD]}})
    return path


def make_store(path: Path, n: int, offset: int) -> Path:
    """`n` real images, 10 classes, taken after the teacher's training images."""
    x, y, classes = fashion_mnist(offset + n)
    if path.exists():
        shutil.rmtree(path)
    with StoreWriter(path, classes, shard_size=1000) as w:
        for i in range(offset, offset + n):
            w.add_image(f"fmnist_{i:06d}", x[i], int(y[i]))
        w.finalize()
    return path


def per_view(store: Path) -> tuple[float, int, int]:
    m = Store(store).manifest
    d = m.labels["distances"]
    data = sum(f.bytes for f in m.files if f.kind == "distances")
    meta = len(json.dumps(m.augmentation, separators=(",", ":"))) + len(json.dumps(d, separators=(",", ":")))
    return (data + meta) / (d["epochs"] * m.num_images), data, meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["500x300", "5000x30"], help="IMAGESxEPOCHS")
    ap.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: train a quick one)")
    ap.add_argument("--teacher-images", type=int, default=10000)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher_file = args.teacher or quick_teacher(args.work / "teacher.pt", args.teacher_images)
    teacher = load_teacher(teacher_file)
    print(f"teacher: {teacher_file} ({time.perf_counter() - t0:.0f} s)")

    layouts = [("fp16 seeded (default)", "fp16", "seeded"), ("int8 seeded", "int8", "seeded"),
               ("fp32 seeded", "fp32", "seeded"), ("fp16 explicit (SRe2L-like columns)", "fp16", "explicit")]
    print(f"\n{'images x epochs':>16}  {'layout':36} {'B/view':>7} {'x smaller than 1000-class fp16':>31}  data B / meta B")
    for cfg in args.configs:
        n, epochs = (int(v) for v in cfg.lower().split("x"))
        base = make_store(args.work / f"base-{n}", n, args.teacher_images)
        recipe = AugRecipe(size=28, seed=0)
        for name, precision, mode in layouts:
            store = args.work / f"{precision}-{mode}-{n}"
            if store.exists():
                shutil.rmtree(store)
            shutil.copytree(base, store)
            t1 = time.perf_counter()
            relabel(store, teacher, epochs, recipe, precision, mode=mode, full_softlabels=name.endswith("(default)"),
                    batch_size=500)
            b, data, meta = per_view(store)
            print(f"{cfg:>16}  {name:36} {b:7.3f} {FULL_1000_FP16 / b:30.0f}x  {data} / {meta}"
                  f"   ({time.perf_counter() - t1:.0f} s)")
            if name.endswith("(default)"):
                m = Store(store).manifest
                soft = sum(f.bytes for f in m.files if f.kind == "softlabels") / (epochs * n)
                print(f"{cfg:>16}  {'full soft labels, 10 classes (zarr)':36} {soft:7.3f}"
                      f" {'(raw fp16: 20 B/view)':>31}")
    print(f"\nbaseline: fp16 full soft labels at 1000 classes = {FULL_1000_FP16} B/view (uncompressed, as "
          "SRe2L/FKD store them)")
    print("targets: default <= 4.5 B/view (>= 440x); int8 <= 2.5 B/view (accuracy: benchmarks/accuracy.py --int8)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
