"""Streaming a store for student training: whole batches of replayed views with their labels.

Each batch is the teacher's exact view of its images for one epoch (same decode, same renderer:
:mod:`nrrstore.train.stream`), with the label columns the student needs: ``images`` (normalized
float [B,C,S,S]), ``y``, ``y_partner``, ``lam``, ``index`` (store positions), and
``d_org``/``d_aug`` (DBR, float32) or ``soft`` (KD probabilities, float32) when asked.

Splitting, so that any number of ranks and workers see one well-defined sequence:
- batch ``b`` of an epoch is ``plan.order[b*B:(b+1)*B]`` (the last one may be short unless
  ``drop_last``); rank ``r`` of ``W`` takes the batches ``b % W == r`` among the first
  ``floor(nb / W) * W``, so every rank gets the same number of batches;
- DataLoader workers decode whole partner groups (work item ``j`` to worker ``j % workers``) and
  send uint8 images; the consumer renders them on ``device``: 0 and N workers yield the same
  batches, and no image is decoded twice in an epoch;
- resuming at ``(epoch, step)`` is ``start_step=step``.

A store is a local folder or a URL (s3://, gs://, http(s)://, through :mod:`nrrstore.format.fs`): an
epoch costs its own row groups and each partner group one range request per shard it touches.
The distance table is read for the current epoch only (its row groups), never the other epochs.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nrrstore.devices import resolve_device
from nrrstore.errors import NrrError, NrrWarning
from nrrstore.format import quant
from nrrstore.format.manifest import Manifest
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import SoftLabels
from nrrstore.train.augment import EXPLICIT_COLUMNS, AugRecipe, ViewBatch
from nrrstore.train.stream import BatchAssembler, ItemSource, ViewStream, assemble, pin_default, worker_count

LABEL_MODES = ("dbr", "kd", "onehot")


def store_recipe(manifest: Manifest, where: str | os.PathLike[str] | None = None) -> AugRecipe:
    """The store's augmentation recipe; a store without one replays ``AugRecipe(size=height, seed=0)``."""
    if manifest.augmentation:
        return AugRecipe.from_dict(manifest.augmentation, None if where is None else os.fspath(where))
    return AugRecipe(size=manifest.image.height, seed=0)


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    """A `Store` for a folder or URL (an open `Store` is passed through)."""
    return store if isinstance(store, Store) else Store(store)


def to_chw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxW / HxWx3 array -> uint8 [C, H, W] tensor (owning its memory)."""
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


@dataclass
class EpochLabels:
    """What one stored epoch provides: per-image distances and, in explicit mode, view parameters."""

    d_org: np.ndarray | None  # float32 [N], row = image
    d_aug: np.ndarray | None
    explicit: tuple[ViewBatch, np.ndarray] | None


def read_epoch_labels(store: Store, epoch: int, need_distances: bool = True) -> EpochLabels:
    """One epoch of the distance table, checked against the store and widened to float32.

    Only that epoch's row groups are read (``Store.read_distances``).
    """
    section = store.manifest.labels.get("distances") or {}
    explicit = section.get("mode", "seeded") == "explicit"
    part = next((p for p in store.distance_files() if p["first_epoch"] <= epoch <= p["last_epoch"]), None)
    where = store.path / part["path"] if part else store.path
    cols = (["image", "d_org", "d_aug"] if need_distances else ["image"]) + (list(EXPLICIT_COLUMNS) if explicit else [])
    try:
        table = store.read_distances(epoch, columns=cols)
    except KeyError as exc:  # a column the mode requires is absent
        raise NrrError(where, f"distance table lacks column {exc}") from None
    n = store.num_images
    image = table.column("image").to_numpy()
    if table.num_rows != n or not np.array_equal(image, np.arange(n)):
        raise NrrError(where, f"distance table image ids do not match the store's images (epoch {epoch}: "
                              f"{table.num_rows} rows, expected images 0..{n - 1} once each, in order)")
    d_org = d_aug = None
    if need_distances:
        precision = section.get("precision", "fp16")
        d_org, d_aug = (_widen(table.column(c), precision, section, where) for c in ("d_org", "d_aug"))
        if not (np.isfinite(d_org).all() and np.isfinite(d_aug).all()):
            raise NrrError(where, f"distance table holds non-finite distances in epoch {epoch}")
    params = None
    if explicit:
        params = ViewBatch.from_columns({c: table.column(c).to_numpy() for c in EXPLICIT_COLUMNS}, os.fspath(where))
    return EpochLabels(d_org, d_aug, params)


def _widen(col: pa.ChunkedArray, precision: str, section: dict[str, Any], where: Path) -> np.ndarray:
    values = col.to_numpy()
    if precision == "int8":
        qmax = (section.get("quant") or {}).get("max")
        if qmax is None:
            raise NrrError(where, "int8 distance table without labels.distances.quant.max in the manifest")
        return quant.decode(values, qmax)
    return values.astype(np.float32)


class DistilledDataset(ViewStream, IterableDataset):
    """Epochs of a store as an iterable of whole batches (rendered on the CPU when iterated directly;
    :func:`make_loader` adds decoding workers and a device).

    ``labels``: "dbr" adds the teacher's ``d_org``/``d_aug``; "kd" adds ``soft`` (teacher
    probabilities of the view, float32 [B, C]); "onehot" adds nothing beyond y/y_partner/lam.
    ``softlabels=True`` adds ``soft`` in any mode. Epochs past the stored ones are an error unless
    ``cycle`` (then stored epoch ``epoch % E`` is replayed, with a warning); one-hot training on a
    seeded store needs no stored epoch and replays any epoch from the seed.
    ``normalize``: images in the store's normalization (the teacher's), else in [0, 1].
    ``num_epochs``: iterate epochs ``epoch .. epoch+num_epochs-1`` back to back (one DataLoader,
    and one set of workers, for a whole training run; ``start_step`` counts within the first).
    Every batch carries its ``epoch`` and ``step`` (index among this rank's batches of the epoch).
    ``cache_mb``: decoded images kept per process (see :class:`~nrrstore.train.stream.ImageBlocks`).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        epoch: int = 0,
        batch_size: int = 100,
        labels: str = "dbr",
        *,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        normalize: bool = True,
        cycle: bool = False,
        softlabels: bool = False,
        drop_last: bool = False,
        num_epochs: int = 1,
        cache_mb: int = 256,
    ) -> None:
        st = open_store(store)
        m = st.manifest
        if labels not in LABEL_MODES:
            raise NrrError(None, f"unknown label mode {labels!r}; use one of {', '.join(LABEL_MODES)}")
        recipe = store_recipe(m, st.path / "manifest.json")
        dist = m.labels.get("distances") or {}
        explicit = dist.get("mode", "seeded") == "explicit"
        super().__init__(st, recipe, batch_size, [], [], rank=rank, world_size=world_size, drop_last=drop_last,
                         cache_mb=cache_mb, explicit=explicit)
        self.root = st.path
        self.labels = labels
        self.want_soft = softlabels or labels == "kd"
        if labels == "dbr" and not dist:
            raise NrrError(st.path, "store has no DBR distances (labels.distances); run `nrrstore relabel` first, "
                                    "or train with labels='onehot'")
        self._soft_section = m.labels.get("softlabels")
        if self.want_soft and not self._soft_section:
            raise NrrError(st.path, "store has no soft labels (labels.softlabels); relabel with --full-softlabels "
                                    "to train with labels='kd'")
        stored = [int(dist["epochs"])] if dist else []
        if self._soft_section:
            stored.append(int(self._soft_section["shape"][0]))
        self.stored_epochs = min(stored) if stored else 0
        self.needs_stored = labels != "onehot" or self.want_soft or explicit
        self.num_classes = m.num_classes
        self.cycle = cycle
        norm = m.normalization if normalize else None
        self.mean = None if norm is None else [float(v) for v in norm["mean"]]
        self.std = None if norm is None else [float(v) for v in norm["std"]]
        self._store: Store | None = st
        self.set_epoch(epoch, start_step, num_epochs)

    # -- epochs ----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_step: int = 0, num_epochs: int = 1) -> None:
        """Point the dataset at other epochs (before creating the DataLoader iterator)."""
        for name, v in (("epoch", epoch), ("start step", start_step), ("number of epochs", num_epochs - 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise NrrError(None, f"{name} must be a non-negative integer, got {v!r}")
        self.epoch, self.start_step, self.num_epochs = int(epoch), int(start_step), int(num_epochs)
        epochs = list(range(self.epoch, self.epoch + self.num_epochs))
        views = [self._resolve_epoch(e) for e in epochs]
        cycled = [(e, v) for e, v in zip(epochs, views) if e != v]
        if cycled:
            e, v = cycled[0]
            warnings.warn(f"{self.root}: the store has {self.stored_epochs} epochs; epoch {e} replays stored "
                          f"epoch {v}, and {len(cycled) - 1} later epoch(s) cycle likewise (cycle=True)", NrrWarning,
                          stacklevel=3)
        self.epochs, self.view_epochs = epochs, views
        self.view_epoch = views[0]

    def _resolve_epoch(self, epoch: int) -> int:
        stored = self.stored_epochs
        if self.needs_stored and not stored:
            raise NrrError(self.root, "store has no stored epochs")
        if stored and epoch >= stored and (self.cycle or self.needs_stored):
            if not self.cycle:
                raise NrrError(self.root, f"epoch {epoch} is beyond the {stored} stored epoch(s) "
                                          f"(0..{stored - 1}); pass cycle=True (--cycle) to reuse them")
            return epoch % stored
        return epoch

    def __len__(self) -> int:
        return self.num_rank_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches rendered here on the CPU (what `make_loader` does with workers and a device)."""
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise NrrError(self.root, "a DataLoader with workers over DistilledDataset would split its batches; "
                                      "use make_loader(..., workers=N), which splits work by partner group")
        return assemble(self.items(), BatchAssembler(self.recipe, self.channels, "cpu", self.mean, self.std))

    # -- labels of the work items ------------------------------------------------------------------
    def _epoch_labels(self, view_epoch: int) -> tuple[EpochLabels | None, _SoftCache | None]:
        if self._store is None:
            self._store = open_store(self.root)
        stored = None
        if self.labels == "dbr" or self.explicit:
            stored = read_epoch_labels(self._store, view_epoch, need_distances=self.labels == "dbr")
        soft = None
        if self.want_soft:
            soft = _SoftCache(SoftLabels(self.root, self._soft_section), view_epoch, self.recipe.group_size,
                              self.num_images)
        return stored, soft

    def _explicit_views(self, context: Any) -> tuple[ViewBatch, np.ndarray] | None:
        stored = context[0]
        return None if stored is None else stored.explicit

    def _item_labels(self, context: Any, own: np.ndarray) -> dict[str, torch.Tensor]:
        stored, soft = context
        out: dict[str, torch.Tensor] = {}
        if self.labels == "dbr":
            assert stored is not None and stored.d_org is not None and stored.d_aug is not None
            out["d_org"] = torch.from_numpy(stored.d_org[own])
            out["d_aug"] = torch.from_numpy(stored.d_aug[own])
        if soft is not None:
            out["soft"] = torch.from_numpy(soft.take(own))
        return out

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the store themselves
        state = dict(self.__dict__)
        state["_store"] = None
        return state


class _SoftCache:
    """Soft labels of one epoch, read a block of consecutive images at a time (zarr chunk friendly)."""

    def __init__(self, soft: SoftLabels, epoch: int, block: int, n: int, max_blocks: int = 8) -> None:
        self.soft, self.epoch, self.block, self.n, self.max_blocks = soft, epoch, block, n, max_blocks
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def take(self, idx: np.ndarray) -> np.ndarray:
        g = self.block
        out = np.empty((len(idx), self.soft.shape[2]), np.float32)
        for blk in np.unique(idx // g).tolist():
            if blk not in self.cache:
                self.cache[blk] = self.soft.read(self.epoch, blk * g, min((blk + 1) * g, self.n))
                while len(self.cache) > self.max_blocks:
                    self.cache.popitem(last=False)
            rows = np.flatnonzero(idx // g == blk)
            out[rows] = self.cache[blk][idx[rows] - blk * g]
        return out


class DistilledLoader:
    """Batches of a :class:`DistilledDataset`: decoded by DataLoader workers, rendered here on ``device``.

    Workers send uint8 images (a quarter of float32's bytes); rendering, float conversion and
    normalization run in this process, on the GPU when ``device`` is one, with pinned memory and
    asynchronous copies. ``decoded`` counts the images decoded during the last pass.
    """

    def __init__(self, dataset: DistilledDataset, workers: int | None = 0, device: str | torch.device = "cpu",
                 pin_memory: bool | None = None, prefetch_factor: int | None = None) -> None:
        self.dataset = dataset
        self.workers = worker_count(workers)
        self.device = resolve_device(device)
        self.pin_memory = pin_default(self.device) if pin_memory is None else bool(pin_memory)
        self.prefetch_factor = prefetch_factor
        self.decoded = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        assembler = BatchAssembler(ds.recipe, ds.channels, self.device, ds.mean, ds.std)
        if self.workers:
            items: Any = DataLoader(ItemSource(ds), batch_size=None, num_workers=self.workers,
                                    pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor or 2)
        else:
            items = ds.items()
        try:
            for item in items:
                if self.pin_memory and not self.workers:
                    item = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
                yield from assembler.feed(item)
        finally:
            self.decoded = assembler.decoded


def make_loader(
    store: Store | str | os.PathLike[str],
    epoch: int = 0,
    batch_size: int = 100,
    labels: str = "dbr",
    *,
    workers: int | None = 0,
    device: str | torch.device = "cpu",
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    **kwargs: Any,
) -> DistilledLoader:
    """Batches of a store on ``device``, decoded by ``workers`` processes (see :class:`DistilledLoader`).

    ``pin_memory`` defaults to on for CUDA devices; ``prefetch_factor`` (items per worker in
    flight, default 2); other keyword arguments go to :class:`DistilledDataset`.
    """
    ds = DistilledDataset(store, epoch, batch_size, labels, **kwargs)
    return DistilledLoader(ds, workers, device, pin_memory, prefetch_factor)
