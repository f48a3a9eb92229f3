"""Full teacher soft labels as a zarr (format 3) array ``labels/softlabels.zarr``: float16 [E, N, C].

Only the KD baseline needs them (DBR stores two numbers per view instead), so they are optional.
Chunks are one epoch by a block of consecutive images, so one epoch is read without the others and a
block of a partner group is one chunk read; every chunk is written whole, which is what lets a killed
relabel job simply rewrite the chunks of the epochs it had not finished.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format import fs
from nrrstore.format.layout import SOFTLABELS_PATH, softlabels_path

ZSTD_LEVEL = 3
WORK_NAME = "softlabels.zarr"
"""The array's folder name inside a job's work folder, before :func:`install_softlabels` moves it."""


def create_label_array(path: str | os.PathLike[str], shape: tuple[int, ...], chunks: tuple[int, ...],
                       dtype: Any, what: str) -> Any:
    """Create (or reopen with the same shape, chunks and type) a zstd-compressed label array for writing: the
    soft labels' and the label codecs' (:mod:`nrrstore.format.codecs`). Its fill value is an invalid label (NaN,
    or the id type's largest value), so a chunk missing when read (never written, or deleted by a relabel
    meanwhile) is refused by the readers, never taken for zeros."""
    import zarr
    from zarr.codecs import ZstdCodec

    p, dt = Path(path), np.dtype(dtype)
    if (p / "zarr.json").is_file():
        arr = zarr.open_array(p, mode="r+")
        if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == tuple(chunks) and arr.dtype == dt:
            return arr
        raise NrrError(p, f"existing {what} array has shape {arr.shape}, chunks {arr.chunks}, dtype {arr.dtype}; "
                          f"expected {shape}, {chunks}, {dt}")
    fill = float("nan") if dt.kind == "f" else int(np.iinfo(dt).max)
    return zarr.create_array(store=p, shape=shape, chunks=chunks, dtype=dt, compressors=ZstdCodec(level=ZSTD_LEVEL),
                             fill_value=fill, zarr_format=3)


def open_label_array(path: fs.Location, what: str) -> Any:
    """A label array opened for reading (local or remote), refused in one line when missing or unreadable."""
    import zarr

    try:
        return zarr.open_array(fs.zarr_source(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several unrelated types for a missing/corrupt array
        unless_out_of_memory(exc)
        raise NrrError(path, f"unreadable {what} array: {type(exc).__name__}: {exc}") from None


def create_softlabels(path: str | os.PathLike[str], epochs: int, num_images: int, num_classes: int,
                      block: int) -> Any:
    """Create (or reopen with the same shape and chunks) the array at ``path`` for writing."""
    shape = (int(epochs), int(num_images), int(num_classes))
    chunks = (1, max(1, min(int(block), int(num_images))), int(num_classes))
    return create_label_array(path, shape, chunks, np.float16, "soft-label")


def create_store_softlabels(root: str | os.PathLike[str], epochs: int, num_images: int, num_classes: int,
                            block: int) -> Any:
    """:func:`create_softlabels` at the store's own place for them (a store being built)."""
    return create_softlabels(Path(root) / SOFTLABELS_PATH, epochs, num_images, num_classes, block)


def install_softlabels(root: str | os.PathLike[str], work: str | os.PathLike[str],
                       version: str | None = None) -> dict[str, str]:
    """Move the array a job wrote in ``work`` into the store at `softlabels_path` (``version``); idempotent.

    Returns the store path and its kind, as :func:`~nrrstore.format.update.update_store` takes them.
    """
    rel = softlabels_path(version)
    fs.move_folder_over(Path(work) / WORK_NAME, Path(root) / rel)
    return {rel: "softlabels"}


def softlabels_section(shape: tuple[int, ...], chunks: tuple[int, ...], temperature: float = 1.0,
                       path: str = SOFTLABELS_PATH) -> dict[str, Any]:
    """The manifest's ``labels.softlabels`` entry."""
    return {"path": path, "shape": list(shape), "chunks": list(chunks), "dtype": "float16",
            "temperature": float(temperature)}


class SoftLabels:
    """Read access to a store's soft labels: ``read(epoch, start, stop) -> float32 [stop-start, C]``."""

    def __init__(self, store_root: str | os.PathLike[str], section: dict[str, Any]) -> None:
        self.path = fs.location(store_root) / section.get("path", SOFTLABELS_PATH)
        self._arr = open_label_array(self.path, "soft-label")
        if self._arr.ndim != 3:
            raise NrrError(self.path, f"soft labels must be [epochs, images, classes], got shape {self._arr.shape}")
        self.shape = tuple(int(s) for s in self._arr.shape)
        self.temperature = float(section.get("temperature", 1.0))

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        try:
            block = self._arr[int(epoch), int(start):int(stop), :]
        except Exception as exc:  # noqa: BLE001 - as above: any zarr, codec or storage failure is one NrrError
            unless_out_of_memory(exc)
            raise NrrError(self.path, f"cannot read soft labels of epoch {epoch}: {type(exc).__name__}: {exc}") from None
        out = np.asarray(block, dtype=np.float32)
        if np.isnan(out).any():
            raise NrrError(self.path, f"soft labels of epoch {epoch} are missing (a chunk never written, or the labels "
                                      "were replaced while being read); reopen the store")
        return out

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened in DataLoader workers
        return {"path": self.path, "shape": self.shape, "temperature": self.temperature}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._arr = open_label_array(self.path, "soft-label")
