"""Which images each batch file describes: SRe2L's sampler replayed, or an order file.

The label files do not say which images they describe. SRe2L draws them with one
``torch.Generator`` seeded once (42) driving a ``RandomSampler`` over its ImageFolder; epoch e is
the sampler's (e+1)-th pass, cut into batches. We replay that very sampler with the installed torch,
or read ``--order-file``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nrrstore.errors import NrrError

DEFAULT_SAMPLER_SEED = 42


def sampler_orders(n: int, seed: int = DEFAULT_SAMPLER_SEED) -> Iterator[np.ndarray]:
    """Image order of epoch 0, 1, ...: successive passes of SRe2L's seeded ``RandomSampler``.

    The sampler itself (not a re-implementation) is iterated to exhaustion each pass, as a
    DataLoader does, so its generator advances exactly as it did in the relabel run.
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    sampler = torch.utils.data.RandomSampler(range(n), generator=g)
    while True:
        # list() runs the iterator to its end: torch's RandomSampler draws one more (empty) randperm
        # there, and a DataLoader always gets that far, so stopping after n items would drift.
        yield np.array(list(sampler), dtype=np.int64)


def file_orders(path: str | os.PathLike[str], n: int, epochs: int) -> Iterator[np.ndarray]:
    """Orders from ``--order-file``: ``.npy`` [E, N] (memory-mapped) or text, one epoch per line."""
    path = Path(path)
    if not path.is_file():
        raise NrrError(path, "no such order file")

    def check(row: np.ndarray, e: int) -> np.ndarray:
        if row.shape != (n,) or row.min() < 0 or row.max() >= n or np.bincount(row, minlength=n).max() != 1:
            raise NrrError(path, f"epoch {e}: the order is not a permutation of the {n} images")
        return row

    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise NrrError(path, f"unreadable .npy order file: {exc}") from None
        if arr.ndim != 2 or arr.shape[0] < epochs or arr.dtype.kind not in "iu":
            raise NrrError(path, f"order array must be integers [epochs >= {epochs}, {n}], found {arr.dtype} {arr.shape}")
        return (check(np.array(arr[e], dtype=np.int64), e) for e in range(epochs))

    def lines() -> Iterator[np.ndarray]:
        e = 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = np.array([int(t) for t in line.replace(",", " ").split()], dtype=np.int64)
                except ValueError:
                    raise NrrError(path, f"epoch {e}: the line holds something other than integers") from None
                yield check(row, e)
                e += 1
                if e == epochs:
                    return
        raise NrrError(path, f"the order file has {e} epoch lines, the labels have {epochs} epochs")

    return lines()
