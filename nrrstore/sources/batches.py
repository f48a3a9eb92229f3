"""Training batches streamed from shards, with a seeded shuffle buffer.

Why a buffer and not a full shuffle: a teacher is trained on the full real data (ImageNet: 1.28M
images), which must stream; shards are visited in a seeded order and samples mixed in a bounded
buffer, so memory does not grow with the dataset and the same seed gives the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nrrstore.errors import NrrError
from nrrstore.sources.shards import Sample, iter_labels, iter_samples, resolve_shards

ImageBatch = Callable[[Sequence[np.ndarray], int], torch.Tensor]
"""uint8 images of one batch and the position of its first in the epoch -> float [N,C,S,S] in [0, 1]."""


def to_tensor01(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``HxW`` / ``HxWxC`` arrays -> float [N,C,H,W] in [0,1]."""
    arr = np.stack([im if im.ndim == 3 else im[:, :, None] for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def estimate_normalization(spec: Any, limit: int = 10000, keys: Collection[str] | None = None) -> dict[str, list[float]]:
    """Per-channel mean and std of ``limit`` images (of ``keys`` if given) spread evenly over the source: what
    the teacher is fed. Evenly, not the first ones: sources are often in class order (CIFAR-10's first 10,000
    training images are two and a half classes, sky-blue airplanes first)."""
    candidates = [key for key, _ in iter_labels(spec) if keys is None or key in keys]  # no image decoded
    chosen = set(candidates) if len(candidates) <= limit else \
        {candidates[i * len(candidates) // limit] for i in range(limit)}
    total = sq = None
    n = 0
    for s in same_shape(iter_samples(spec, want_key=lambda label, key: key in chosen)):
        x = s.image.astype(np.float64) / 255.0
        x = x.reshape(-1, 1 if x.ndim == 2 else x.shape[2])
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
        n += x.shape[0]
    assert total is not None and sq is not None
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 1e-12))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def first_per_class(spec: Any, limit: int, num_classes: int | None = None) -> set[str]:
    """Keys of the first ``limit`` samples of each class in shard order (one pass, nothing decoded)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise NrrError(None, f"the per-class limit must be a positive integer, got {limit!r}")
    counts: dict[int, int] = {}
    keys: set[str] = set()
    for key, label in iter_labels(spec, num_classes=num_classes):
        if counts.get(label, 0) < limit:
            counts[label] = counts.get(label, 0) + 1
            keys.add(key)
    return keys


def same_shape(samples: Iterator[Sample]) -> Iterator[Sample]:
    """Refuse a sample whose image shape differs from the first one's (a batch needs one shape)."""
    first: Sample | None = None
    for s in samples:
        if first is None:
            first = s
        elif s.image.shape != first.image.shape:
            raise NrrError(s.shard, f"image {s.key!r} is {_shape(s.image)}, but {first.key!r} is {_shape(first.image)}: "
                                    "a set must share one size and colour mode (prepare it with --resize and --mode)")
        yield s


def _shape(image: np.ndarray) -> str:
    h, w = image.shape[:2]
    return f"{h}x{w}x{1 if image.ndim == 2 else image.shape[2]}"


def _random_crops(x: torch.Tensor, pad: int, rng: random.Random) -> torch.Tensor:
    """One random ``H x W`` window per image of the zero-padded batch (offsets from ``rng``: seeded)."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
        out[i] = padded[i, :, top:top + h, left:left + w]
    return out


def shard_batches(spec: Any, batch_size: int, mean: Sequence[float], std: Sequence[float], *, epoch: int = 0,
                  seed: int = 0, shuffle: bool = True, buffer: int = 10000, flip: bool = False,
                  crop_pad: int = 0, num_classes: int | None = None, keys: Collection[str] | None = None,
                  to_float: ImageBatch | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized batches ``(x [B,C,H,W], y [B])``; shuffled per (seed, epoch) when ``shuffle``.

    ``crop_pad`` > 0: the CIFAR recipe's random crop, i.e. pad each image by that many black pixels per
    side and cut a random window of the original size (torchvision's ``RandomCrop(size, padding=p)``).
    ``to_float`` replaces the plain conversion of each batch's uint8 images to [0, 1] floats (the ImageNet
    recipe's random-resized crops: `nrrstore.train.teacher_crops`). ``keys``: use only these samples (e.g.
    `first_per_class`); the others are not decoded.
    """
    if crop_pad < 0:
        raise NrrError(None, f"crop padding must be at least 0, got {crop_pad}")
    done = 0
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
        nonlocal done
        x = (to_float or (lambda images, first: to_tensor01(images)))([o[0] for o in out], done)
        if crop_pad:
            x = _random_crops(x, crop_pad, rng)
        done += len(out)
        if flip:
            flips = torch.tensor([rng.random() < 0.5 for _ in out])
            x[flips] = x[flips].flip(-1)
        y = torch.tensor([o[1] for o in out], dtype=torch.long)
        out.clear()
        return (x - m) / s, y

    wanted = None if keys is None else (lambda label, key: key in keys)
    for sample in same_shape(iter_samples(urls, num_classes=num_classes, want_key=wanted)):
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

