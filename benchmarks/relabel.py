"""S3: relabel wall time / the bare teacher forward over the same views, 224 px, ResNet-18, CPU.

The store: ``--images`` real 224 px RGB JPEGs (crops of scikit-image's photos, photos224.py),
6 classes. The teacher: a randomly initialised ResNet-18 (ImageNet stem; relabel's speed does
not depend on what it knows). Measured alternately ``--repeat`` times after a warm-up:

- relabel: the whole ``relabel(store, teacher, epochs)`` call (decode, render, teacher, distances,
  Parquet, checksums, manifest), with ``--workers`` decoding processes;
- forward: ``teacher.model(x)`` under ``inference_mode`` over exactly the batches relabel fed it
  (the same views, rendered beforehand and held in memory).

S3 = relabel / forward (target <= 1.15 on the CPU). ``--amp bf16`` runs both under autocast.
``--memory`` adds relabel's peak RSS at two image counts and two epoch counts (fresh processes).

    python benchmarks/relabel.py                          # 192 images x 1 epoch, 2 repeats
    python benchmarks/relabel.py --memory --repeat 1
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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos224 import photo_jpegs, write_store

from nrrstore.devices import amp_dtype, autocast
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import default_recipe, relabel
from nrrstore.models import load_teacher
from nrrstore.replay.stream import BatchAssembler, ViewStream, assemble

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "relabel"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def teacher(device: str = "cpu"):
    torch.manual_seed(0)
    return load_teacher("resnet18", device, num_classes=6, image_size=224, normalization=IMAGENET)


def teacher_views(store: Path, t, epochs: int, batch: int, device: str) -> list[torch.Tensor]:
    """The batches relabel feeds the teacher (same recipe, order, batch size, normalization)."""
    st = Store(store)
    recipe = default_recipe(st, t)
    stream = ViewStream(st, recipe, batch, list(range(epochs)), list(range(epochs)), cache_mb=0)
    asm = BatchAssembler(recipe, 3, device, list(t.mean), list(t.std))
    return [b["images"].clone() for b in assemble(stream.items(), asm)]


def forward(t, batches: list[torch.Tensor], amp: str | None, device: str) -> float:
    dt = amp_dtype(amp, device)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(torch.device(device), dt):
        for x in batches:
            t.model(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_rss(store: Path, epochs: int) -> float:
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from relabel import teacher\n"
        "from nrrstore.labels.relabel import relabel\n"
        f"relabel({str(store)!r}, teacher(), {epochs}, batch_size=64, overwrite=True, cache_mb=64)\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory() -> None:
    print("\nPeak RSS (MB, VmHWM) of relabel (fresh process each; ResNet-18, batch 64, cache_mb 64):")
    stores = {}
    for n in (128, 512):
        stores[n] = write_store(WORK / f"mem-{n}", photo_jpegs(n, classes=6, seed=2), 6)
    for n, epochs in ((128, 1), (512, 1), (128, 4)):
        print(f"  {n:4d} images x {epochs} epoch(s): {peak_rss(stores[n], epochs):.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--amp", default=None, help="bf16 or fp16: run both sides under autocast")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        return memory()
    if WORK.exists():
        shutil.rmtree(WORK)
    store = write_store(WORK / "store", photo_jpegs(args.images, classes=6), 6)
    t = teacher(args.device)
    views = args.images * args.epochs
    print(f"{args.images} images x {args.epochs} epoch(s) = {views} views, 224 px JPEG, ResNet-18, batch "
          f"{args.batch_size}, device {args.device}, amp {args.amp or 'fp32'}, workers {args.workers}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    batches = teacher_views(store, t, args.epochs, args.batch_size, args.device)
    assert sum(len(b) for b in batches) == views
    forward(t, batches[:1], args.amp, args.device)  # warm-up
    rel, fwd = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        relabel(store, t, args.epochs, batch_size=args.batch_size, overwrite=True, device=args.device,
                amp=args.amp, workers=args.workers)
        rel.append(time.perf_counter() - t0)
        fwd.append(forward(t, batches, args.amp, args.device))
        print(f"  relabel {rel[-1]:.2f} s ({views / rel[-1]:.1f} views/s), forward {fwd[-1]:.2f} s "
              f"({views / fwd[-1]:.1f} views/s), ratio {rel[-1] / fwd[-1]:.3f}", flush=True)
    print(f"S3 = relabel / forward: {min(rel) / min(fwd):.3f} best, {statistics.median(rel) / statistics.median(fwd):.3f} "
          f"median, {statistics.median([r / f for r, f in zip(rel, fwd, strict=True)]):.3f} median of paired runs "
          f"(target <= 1.15)")
    if args.memory:
        memory()
    print(json.dumps({"relabel_s": rel, "forward_s": fwd}))


if __name__ == "__main__":
    main()
