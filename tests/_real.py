"""Small real images for tests: crops of the photos scikit-image ships, and embedded Fashion-MNIST."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FMNIST_TRAIN = ROOT / "data" / "fashion-mnist" / "train"
FMNIST_TEST = ROOT / "data" / "fashion-mnist" / "test"


@cache
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data

    return (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())


def photo_crops(n: int, size: int = 32, classes: int = 3) -> list[tuple[np.ndarray, int]]:
    """``n`` RGB crops of real photos; the label is the photo the crop came from."""
    out = []
    photos = _photos()
    for i in range(n):
        c = i % classes
        img = photos[c]
        y = (i * 37) % (img.shape[0] - size)
        x = (i * 53) % (img.shape[1] - size)
        out.append((np.ascontiguousarray(img[y:y + size, x:x + size]), c))
    return out


@cache
def fmnist(split: str = "train", per_class: int | None = None) -> tuple[tuple[str, np.ndarray, int], ...]:
    """Embedded Fashion-MNIST samples ``(key, 28x28 uint8, label)`` in shard order."""
    from nrrstore.sources.shards import iter_samples

    folder = FMNIST_TRAIN if split == "train" else FMNIST_TEST
    counts: dict[int, int] = {}
    out = []
    for s in iter_samples(folder):
        if per_class is not None and counts.get(s.label, 0) >= per_class:
            continue
        counts[s.label] = counts.get(s.label, 0) + 1
        out.append((s.key, s.image, s.label))
    return tuple(out)


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
