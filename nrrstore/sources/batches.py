"""Training batches streamed from shards, with a seeded shuffle buffer.

Why a buffer and not a full shuffle: a teacher is trained on the full real data (ImageNet: 1.28M
images), which must stream; shards are visited in a seeded order and samples mixed in a bounded
buffer, so memory does not grow with the dataset and the same seed gives the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nrrstore.sources.shards import iter_samples, resolve_shards


def to_tensor01(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``HxW`` / ``HxWxC`` arrays -> float [N,C,H,W] in [0,1]."""
    arr = np.stack([im if im.ndim == 3 else im[:, :, None] for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def estimate_normalization(spec: Any, limit: int = 10000) -> dict[str, list[float]]:
    """Per-channel mean and std of the first ``limit`` images (what the teacher will be fed)."""
    total = sq = None
    n = 0
    for i, s in enumerate(iter_samples(spec)):
        if i >= limit:
            break
        x = s.image.astype(np.float64) / 255.0
        x = x.reshape(-1, 1 if x.ndim == 2 else x.shape[2])
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
        n += x.shape[0]
    assert total is not None and sq is not None
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 1e-12))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def shard_batches(spec: Any, batch_size: int, mean: Sequence[float], std: Sequence[float], *, epoch: int = 0,
                  seed: int = 0, shuffle: bool = True, buffer: int = 10000, flip: bool = False,
                  num_classes: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized batches ``(x [B,C,H,W], y [B])``; shuffled per (seed, epoch) when ``shuffle``."""
    rng = random.Random(seed * 1_000_003 + epoch)
    urls = resolve_shards(spec)
    if shuffle:
        urls = list(urls)
        rng.shuffle(urls)
    m = torch.tensor(list(mean)).view(1, -1, 1, 1)
    s = torch.tensor(list(std)).view(1, -1, 1, 1)
    pool: list[tuple[np.ndarray, int]] = []
    out: list[tuple[np.ndarray, int]] = []

    def emit() -> tuple[torch.Tensor, torch.Tensor]:
        x = to_tensor01([o[0] for o in out])
        if flip:
            flips = torch.tensor([rng.random() < 0.5 for _ in out])
            x[flips] = x[flips].flip(-1)
        y = torch.tensor([o[1] for o in out], dtype=torch.long)
        out.clear()
        return (x - m) / s, y

    for sample in iter_samples(urls, num_classes=num_classes):
        item = (sample.image, sample.label)
        if not shuffle:
            out.append(item)
        elif len(pool) < buffer:
            pool.append(item)
            continue
        else:
            j = rng.randrange(len(pool))
            out.append(pool[j])
            pool[j] = item
        if len(out) == batch_size:
            yield emit()
    rng.shuffle(pool)
    for item in pool:
        out.append(item)
        if len(out) == batch_size:
            yield emit()
    if out:
        yield emit()

