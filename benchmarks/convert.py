"""S4 (was P4): convert-softlabels throughput / raw `torch.load` of the same files, side by side in one run.

An SRe2L relabel folder at ImageNet scale is written here: ``--classes`` (1000) class folders of
``--ipc`` images each, as SRe2L saves its synthetic images (``--image-size`` 224: RGB JPEGs cut
from scikit-image's photos, benchmarks/photos224.py; 28: Fashion-MNIST PNGs), ``--epochs`` epochs
of ``epoch_{e}/batch_{b}.tar`` files holding SRe2L's list ``[coords, flip, partner, lam, box,
logits]`` with fp16 logits [B, 1000] and CutMix parameters. The logits are random: conversion
speed does not depend on what a teacher knows. Conversion keeps the JPEGs' bytes (pass-through)
and converts epochs in its process pool (``--workers``, default: convert's own choice).

Measured, each the best of ``--repeat`` runs after one warm-up pass (page cache warm for both):
- raw: ``torch.load(weights_only=True)`` of every batch file in order, with the same allow-list of
  numpy integer scalars the converter needs to read them at all (`safe_torch_load`);
- convert: the whole `convert_sre2l` call (images into a store, every file loaded and checked,
  distances computed, Parquet written, checksums, manifest), and its label phase alone.
S4 = convert files/s / raw files/s, end to end (target >= 0.7). Then the converted store's size report.

    python benchmarks/convert.py                              # 1000 classes x 2 IPC, 224 px JPEG, 50 epochs, B=256
    python benchmarks/convert.py --epochs 4 --repeat 1        # a quick check
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos224 import photo_jpegs

from nrrstore.convert.size_report import format_report, size_report
from nrrstore.convert.sre2l import convert_sre2l, safe_torch_load

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "convert"


def write_images(root: Path, classes: int, ipc: int, size: int) -> int:
    """``n{class:05d}/img{i:03d}.jpg`` (224 px photo crops) or ``.png`` (28 px Fashion-MNIST)."""
    n = classes * ipc
    if size == 28:
        from nrrstore.sources.shards import iter_samples

        src = Path("/work/fm/train") if Path("/work/fm/train").exists() else ROOT / "data/fashion-mnist/train"
        images = []
        for s in iter_samples(src, decode=False):
            if s.data is None:  # iter_samples keeps every image member's stored bytes
                raise RuntimeError(f"{s.shard}: {s.key} has no stored image bytes")
            images.append(s.data)
            if len(images) == n:
                break
        ext = "png"
    else:
        images = [data for data, _ in photo_jpegs(n, size=size, classes=8)]
        ext = "jpg"
    for k, data in enumerate(images):
        folder = root / f"n{k // ipc:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{k % ipc:03d}.{ext}").write_bytes(data)
    return n


def write_labels(root: Path, n: int, classes: int, epochs: int, batch: int, size: int, seed: int = 0) -> list[Path]:
    """SRe2L's relabel output with CutMix: the list layout, numpy-integer boxes, fp16 logits."""
    rng = np.random.default_rng(seed)
    files = []
    for e in range(epochs):
        (root / f"epoch_{e}").mkdir(parents=True, exist_ok=True)
        for b in range(math.ceil(n / batch)):
            m = min(batch, n - b * batch)
            h = rng.integers(size // 8, size + 1, m)
            w = rng.integers(size // 8, size + 1, m)
            i = (rng.random(m) * (size + 1 - h)).astype(np.int64)
            j = (rng.random(m) * (size + 1 - w)).astype(np.int64)
            coords = torch.from_numpy(np.stack([i / size, j / size, h / size, w / size], 1).astype(np.float32))
            lam = float(rng.beta(1.0, 1.0))
            cut = int(size * math.sqrt(1 - lam))
            cx, cy = rng.integers(size), rng.integers(size)
            box = [np.clip(cx - cut // 2, 0, size), np.clip(cy - cut // 2, 0, size),
                   np.clip(cx + cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)]
            logits = torch.from_numpy(rng.normal(0, 3, (m, classes)).astype(np.float16))
            path = root / f"epoch_{e}" / f"batch_{b}.tar"
            torch.save([coords, torch.from_numpy(rng.random(m) < 0.5), torch.from_numpy(rng.permutation(m)), lam,
                        box, logits], path)
            files.append(path)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--ipc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224, choices=[28, 224])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no contention on a shared machine)")
    ap.add_argument("--workers", type=int, default=None, help="convert's worker processes (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if WORK.exists():
        shutil.rmtree(WORK)
    t = time.perf_counter()
    n = write_images(WORK / "images", args.classes, args.ipc, args.image_size)
    files = write_labels(WORK / "labels", n, args.classes, args.epochs, args.batch, args.image_size)
    label_bytes = sum(f.stat().st_size for f in files)
    image_bytes = sum(p.stat().st_size for p in (WORK / "images").rglob("*") if p.is_file())
    print(f"fixture: {n} images ({args.image_size} px, {image_bytes / 1e6:.1f} MB), {args.classes} classes, {args.epochs} epochs x {len(files) // args.epochs} files "
          f"of <= {args.batch} views; {len(files)} files, {label_bytes / 1e6:.1f} MB of labels "
          f"({time.perf_counter() - t:.1f} s to write)")

    def cpu() -> float:
        """CPU seconds of this process and its reaped children (convert's workers)."""
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def raw() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), cpu()
        for f in files:
            safe_torch_load(f)
        return time.perf_counter() - t0, cpu() - c0

    def convert() -> tuple[float, float, float, float, dict]:
        out = WORK / "store"
        if out.exists():
            shutil.rmtree(out)
        t0, c0 = time.perf_counter(), cpu()
        summary = convert_sre2l(WORK / "labels", WORK / "images", out, normalization=None, workers=args.workers)
        wall, total_cpu = time.perf_counter() - t0, cpu() - c0
        own = summary["phase_cpu_seconds"]
        label_cpu = total_cpu - own["images"] - own["finish"]  # workers run only in the label phase
        return wall, total_cpu, summary["phase_seconds"]["labels"], label_cpu, summary

    raw()  # warm-up: page cache and torch's first-call costs
    raws, convs = [], []
    summary: dict[str, Any] = {}
    for _ in range(args.repeat):
        raws.append(raw())
        *times, summary = convert()
        convs.append(times)
    raw_wall, raw_cpu = min(r[0] for r in raws), min(r[1] for r in raws)
    conv_wall, conv_cpu, lab_wall, lab_cpu = (min(c[k] for c in convs) for k in range(4))
    nf = len(files)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} during the run; torch threads {args.threads}; "
          f"convert workers {summary['workers']}")
    print(f"raw torch.load      : {nf / raw_wall:7.1f} files/s wall ({raw_wall:.3f} s, {label_bytes / raw_wall / 1e6:.0f} MB/s), "
          f"{raw_cpu / nf * 1e3:.3f} ms CPU/file")
    print(f"convert (end to end): {nf / conv_wall:7.1f} files/s wall ({conv_wall:.3f} s: images "
          f"{summary['phase_seconds']['images']:.2f} s, labels {summary['phase_seconds']['labels']:.2f} s, "
          f"finish {summary['phase_seconds']['finish']:.2f} s), {conv_cpu / nf * 1e3:.3f} ms CPU/file")
    print(f"convert label phase : {nf / lab_wall:7.1f} files/s wall ({lab_wall:.3f} s), {lab_cpu / nf * 1e3:.3f} ms CPU/file")
    print(f"S4 = convert / raw  : wall {raw_wall / conv_wall:.2f} end to end, {raw_wall / lab_wall:.2f} label phase; "
          f"CPU {raw_cpu / conv_cpu:.2f} end to end, {raw_cpu / lab_cpu:.2f} label phase (target >= 0.7 end to end)")
    print(f"images stored: {summary.get('images_stored')}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print()
    print(format_report(size_report(WORK / "store")))
    if not args.keep:
        shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
