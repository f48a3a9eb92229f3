"""Streaming a store for student training: whole batches of replayed views with their labels.

Each batch is the teacher's exact view of its images for one epoch (same decode, same
:func:`~nrrstore.train.augment.render_batch`), with the label columns the student needs:
``images`` (normalized float [B,C,S,S]), ``y``, ``y_partner``, ``lam``, ``index`` (store positions),
and ``d_org``/``d_aug`` (DBR, float32) or ``soft`` (KD probabilities, float32) when asked.

Splitting, so that any number of ranks and workers see one well-defined sequence:
- batch ``b`` of an epoch is ``plan.order[b*B:(b+1)*B]`` (the last one may be short unless
  ``drop_last``); rank ``r`` of ``W`` takes the batches ``b % W == r`` among the first
  ``floor(nb / W) * W``, so every rank gets the same number of batches;
- a rank's ``k``-th batch (from ``start_step``) goes to DataLoader worker ``k % workers``, which is
  the order in which DataLoader hands worker results back: 0 and N workers yield the same sequence;
- resuming at ``(epoch, step)`` is ``start_step=step``.

A store is a local folder or an ``http(s)://`` URL (:class:`RemoteStore`: HTTP Range requests, so
an epoch still costs its own row groups and each group one request per shard it touches).

I/O: a partner group (``recipe.group_size`` consecutive images, see
:func:`~nrrstore.train.augment.epoch_plan`) is read with one ranged read per shard it touches,
using ``index.parquet``'s byte offsets, and decoded groups are kept in a small LRU cache. The
distance table is read for the current epoch only (its row groups), never the other epochs.
"""

from __future__ import annotations

import io
import json
import math
import os
import urllib.error
import urllib.request
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

from nrrstore.errors import NrrError, NrrWarning
from nrrstore.format import quant
from nrrstore.format.images import decode_image
from nrrstore.format.manifest import Manifest
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import SoftLabels
from nrrstore.train.augment import EXPLICIT_COLUMNS, AugRecipe, EpochPlan, ViewBatch, epoch_plan, render_batch

LABEL_MODES = ("dbr", "kd", "onehot")


def store_recipe(manifest: Manifest, where: str | os.PathLike[str] | None = None) -> AugRecipe:
    """The store's augmentation recipe; a store without one replays ``AugRecipe(size=height, seed=0)``."""
    if manifest.augmentation:
        return AugRecipe.from_dict(manifest.augmentation, None if where is None else os.fspath(where))
    return AugRecipe(size=manifest.image.height, seed=0)


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    """A `Store` for a local folder, a `RemoteStore` for an ``http(s)://`` URL."""
    if isinstance(store, Store):
        return store
    if isinstance(store, str) and store.startswith(("http://", "https://")):
        return RemoteStore(store)
    return Store(store)


# -- remote stores ------------------------------------------------------------------------------------
class URL(str):
    """An http(s) location that joins like a Path (``url / "labels/x.parquet"``), so code paths agree."""

    def __truediv__(self, rel: str) -> URL:
        return URL(f"{self.rstrip('/')}/{rel}")


def http_read(url: str, start: int | None = None, stop: int | None = None, timeout: float = 60.0) -> bytes:
    """Bytes ``[start, stop)`` of ``url`` with one Range request (the whole body without a range)."""
    headers = {} if start is None else {"Range": f"bytes={start}-{int(stop) - 1}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            data, status = r.read(), r.status
    except urllib.error.HTTPError as exc:
        raise NrrError(url, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NrrError(url, f"cannot fetch: {getattr(exc, 'reason', exc)}") from None
    if start is not None:
        if status == 200:  # the server ignored the range and sent everything
            data = data[start:stop]
        if len(data) != int(stop) - start:
            raise NrrError(url, f"truncated: wanted bytes {start}..{stop}, got {len(data)}")
    return data


class HttpFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests (what pyarrow needs to read one row group)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        super().__init__()
        self.url, self.timeout, self.pos = url, timeout, 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
                self.size = int(r.headers["Content-Length"])
        except urllib.error.HTTPError as exc:
            raise NrrError(url, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TypeError, ValueError) as exc:
            raise NrrError(url, f"cannot stat over HTTP: {getattr(exc, 'reason', exc)}") from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n:
            buffer[:n] = http_read(self.url, self.pos, self.pos + n, self.timeout)
            self.pos += n
        return n


class RemoteStore(Store):
    """A finished store served over http(s): manifest, index, shards and distances by Range requests.

    One epoch's distances cost pyarrow's footer read (the file's last 64 KiB) plus that epoch's
    column chunks. Read-only; soft labels (zarr) are not read over HTTP.
    """

    def __init__(self, url: str) -> None:  # noqa: D107 - no local folder, so Store.__init__ does not apply
        self.path = URL(url)  # type: ignore[assignment]
        where = self.path / "manifest.json"
        try:
            doc = json.loads(http_read(where))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NrrError(where, f"manifest is not valid JSON ({exc})") from None
        self.manifest = Manifest.from_dict(doc, where)

    def _table_source(self, rel: str) -> Any:
        return HttpFile(self.path / rel)

    def _read_span(self, shard: str, offset: int, size: int) -> bytes:
        return http_read(self.path / shard, offset, offset + size)


class ImageBlocks:
    """Decoded images of a store by block of consecutive positions, read through the index offsets.

    Why blocks: images of a partner group are consecutive in store order and therefore consecutive
    in one shard (or two), so a group costs one ``read`` per shard instead of one per image. Decoded
    blocks are kept in an LRU cache of at most ``cache_mb`` (per process; not copied to workers).
    """

    def __init__(self, store: Store, block: int, cache_mb: int = 256) -> None:
        idx = store.index
        self.root = store.path
        self.remote = isinstance(store, RemoteStore)
        n = idx.num_rows
        if not np.array_equal(idx.column("image").to_numpy(), np.arange(n)):
            raise NrrError(store.path / "index.parquet", "index rows are not images 0..N-1 in order")
        shards = idx.column("shard").to_pylist()
        self.shards = list(dict.fromkeys(shards))
        code = {s: i for i, s in enumerate(self.shards)}
        self.shard_id = np.array([code[s] for s in shards], dtype=np.int32)
        self.offset = idx.column("offset").to_numpy().astype(np.int64)
        self.size = idx.column("size").to_numpy().astype(np.int64)
        self.keys = idx.column("key").to_pylist()
        self.num_images = n
        self.block = max(1, int(block))
        im = store.manifest.image
        block_bytes = self.block * im.height * im.width * im.channels
        self.max_cached = max(2, int(cache_mb * 2**20 // max(1, block_bytes)))
        self._cache: OrderedDict[int, list[torch.Tensor]] = OrderedDict()

    def read_range(self, start: int, stop: int) -> list[torch.Tensor]:
        """uint8 [C, H, W] tensors of images ``start..stop-1``."""
        out: list[torch.Tensor] = []
        i = start
        while i < stop:
            sid = self.shard_id[i]
            j = i
            while j < stop and self.shard_id[j] == sid:
                j += 1
            lo, hi = int(self.offset[i]), int(self.offset[j - 1] + self.size[j - 1])
            path = self.root / self.shards[sid]
            data = http_read(path, lo, hi) if self.remote else _read_file_span(path, lo, hi)
            view = memoryview(data)
            for k in range(i, j):
                a = int(self.offset[k]) - lo
                pixels = decode_image(bytes(view[a:a + int(self.size[k])]), f"{path}:{self.keys[k]}")
                out.append(to_chw(pixels))
            i = j
        return out

    def block_images(self, b: int) -> list[torch.Tensor]:
        """The decoded images of block ``b`` (from the cache when there)."""
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        start = b * self.block
        imgs = self._cache[b] = self.read_range(start, min(start + self.block, self.num_images))
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return imgs

    def images(self, need: np.ndarray) -> dict[int, torch.Tensor]:
        """``{i: uint8 [C, H, W]}`` for the store positions ``need``."""
        g = self.block
        out: dict[int, torch.Tensor] = {}
        for blk in np.unique(need // g).tolist():
            imgs = self.block_images(blk)
            for i in need[(need // g) == blk].tolist():
                out[i] = imgs[i - blk * g]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict()}


def _read_file_span(path: Path, lo: int, hi: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(lo)
            data = f.read(hi - lo)
    except OSError as exc:
        raise NrrError(path, f"cannot read shard: {exc.strerror or exc}") from None
    if len(data) != hi - lo:
        raise NrrError(path, f"truncated shard: wanted bytes {lo}..{hi}, file ends earlier")
    return data


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


class DistilledDataset(IterableDataset):
    """Epochs of a store as an iterable of whole batches (use ``DataLoader(ds, batch_size=None)``).

    ``labels``: "dbr" adds the teacher's ``d_org``/``d_aug``; "kd" adds ``soft`` (teacher
    probabilities of the view, float32 [B, C]); "onehot" adds nothing beyond y/y_partner/lam.
    ``softlabels=True`` adds ``soft`` in any mode. Epochs past the stored ones are an error unless
    ``cycle`` (then stored epoch ``epoch % E`` is replayed, with a warning); one-hot training on a
    seeded store needs no stored epoch and replays any epoch from the seed.
    ``normalize``: images in the store's normalization (the teacher's), else in [0, 1].
    ``num_epochs``: iterate epochs ``epoch .. epoch+num_epochs-1`` back to back (one DataLoader,
    and one set of workers, for a whole training run; ``start_step`` counts within the first).
    Every batch carries its ``epoch`` and ``step`` (index among this rank's batches of the epoch).
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
        super().__init__()
        st = open_store(store)
        m = st.manifest
        if labels not in LABEL_MODES:
            raise NrrError(None, f"unknown label mode {labels!r}; use one of {', '.join(LABEL_MODES)}")
        if batch_size < 1:
            raise NrrError(None, f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise NrrError(None, f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.root = st.path
        self.recipe = store_recipe(m, st.path / "manifest.json")
        self.labels = labels
        self.want_soft = softlabels or labels == "kd"
        dist = m.labels.get("distances") or {}
        self.explicit = dist.get("mode", "seeded") == "explicit"
        if labels == "dbr" and not dist:
            raise NrrError(st.path, "store has no DBR distances (labels.distances); run `nrrstore relabel` first, "
                                    "or train with labels='onehot'")
        self._soft_section = m.labels.get("softlabels")
        if self.want_soft and not self._soft_section:
            raise NrrError(st.path, "store has no soft labels (labels.softlabels); relabel with --full-softlabels "
                                    "to train with labels='kd'")
        if self.want_soft and isinstance(st, RemoteStore):
            raise NrrError(st.path, "soft labels are not read over HTTP; use a local copy of the store for labels='kd'")
        stored = [int(dist["epochs"])] if dist else []
        if self._soft_section:
            stored.append(int(self._soft_section["shape"][0]))
        self.stored_epochs = min(stored) if stored else 0
        self.needs_stored = labels != "onehot" or self.want_soft or self.explicit
        self.num_images = m.num_images
        self.num_classes = m.num_classes
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = drop_last
        self.cycle = cycle
        norm = m.normalization if normalize else None
        self._norm = None if norm is None else list(zip(norm["mean"], norm["std"]))
        self._labels = st.labels()
        self._blocks = ImageBlocks(st, self.recipe.group_size, cache_mb)
        self._store: Store | None = st
        self.set_epoch(epoch, start_step, num_epochs)

    # -- epochs and splitting --------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_step: int = 0, num_epochs: int = 1) -> None:
        """Point the dataset at other epochs (before creating the DataLoader iterator)."""
        for name, v in (("epoch", epoch), ("start step", start_step), ("number of epochs", num_epochs - 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise NrrError(None, f"{name} must be a non-negative integer, got {v!r}")
        self.epoch, self.start_step, self.num_epochs = int(epoch), int(start_step), int(num_epochs)
        views = [self._resolve_epoch(e) for e in range(self.epoch, self.epoch + self.num_epochs)]
        cycled = [(e, v) for e, v in zip(range(self.epoch, self.epoch + self.num_epochs), views) if e != v]
        if cycled:
            e, v = cycled[0]
            warnings.warn(f"{self.root}: the store has {self.stored_epochs} epochs; epoch {e} replays stored "
                          f"epoch {v}, and {len(cycled) - 1} later epoch(s) cycle likewise (cycle=True)", NrrWarning,
                          stacklevel=3)
        self.view_epochs = views
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

    @property
    def num_batches(self) -> int:
        """Batches of the whole epoch, before splitting over ranks."""
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def rank_batches(self) -> list[int]:
        """Global batch numbers of this rank in one epoch, in order (equal count on every rank)."""
        usable = (self.num_batches // self.world_size) * self.world_size
        return list(range(self.rank, usable, self.world_size))

    def __len__(self) -> int:
        return max(0, self.num_epochs * len(self.rank_batches()) - self.start_step)

    # -- iteration ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.rank_batches()
        per_epoch = len(mine)
        current: tuple[int, EpochPlan, EpochLabels | None, _SoftCache | None] | None = None
        for j in range(self.start_step + worker, self.num_epochs * per_epoch, workers):
            e, step = divmod(j, per_epoch)
            if current is None or current[0] != e:
                view_epoch = self.view_epochs[e]
                plan = epoch_plan(self.recipe, view_epoch, self.num_images)
                stored = self._epoch_labels(view_epoch) if self.labels == "dbr" or self.explicit else None
                soft = _SoftCache(SoftLabels(self.root, self._soft_section), view_epoch, self._blocks.block,
                                  self.num_images) if self.want_soft else None
                current = (e, plan, stored, soft)
            _, plan, stored, soft = current
            yield self._batch(mine[step], self.epoch + e, step, plan, stored, soft)

    def _epoch_labels(self, view_epoch: int) -> EpochLabels:
        if self._store is None:
            self._store = open_store(self.root)
        return read_epoch_labels(self._store, view_epoch, need_distances=self.labels == "dbr")

    def _batch(self, b: int, epoch: int, step: int, plan: EpochPlan, stored: EpochLabels | None,
               soft: _SoftCache | None) -> dict[str, Any]:
        B = self.batch_size
        idx = plan.order[b * B:(b + 1) * B]
        explicit = stored.explicit if stored is not None else None
        partner = explicit[1][idx] if explicit is not None else plan.partner[idx]
        imgs = self._blocks.images(np.unique(np.concatenate([idx, partner])))
        views, lam, partner_t = render_batch(imgs, idx, None if explicit is not None else plan, self.recipe,
                                             plan.epoch, explicit=explicit)
        if self._norm is not None:  # per channel with scalars: cheaper than a broadcast kernel, same values
            for c, (mean, std) in enumerate(self._norm):
                views[:, c].sub_(mean).div_(std)
        out: dict[str, Any] = {
            "images": views,
            "y": torch.from_numpy(self._labels[idx]),
            "y_partner": torch.from_numpy(self._labels[partner_t.numpy()]),
            "lam": lam,
            "index": torch.from_numpy(idx.astype(np.int64)),
            "epoch": epoch,
            "step": step,
        }
        if self.labels == "dbr":
            assert stored is not None and stored.d_org is not None and stored.d_aug is not None
            out["d_org"] = torch.from_numpy(stored.d_org[idx])
            out["d_aug"] = torch.from_numpy(stored.d_aug[idx])
        if soft is not None:
            out["soft"] = torch.from_numpy(soft.take(idx))
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


def make_loader(
    store: Store | str | os.PathLike[str],
    epoch: int = 0,
    batch_size: int = 100,
    labels: str = "dbr",
    *,
    workers: int = 0,
    pin_memory: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader over :class:`DistilledDataset` (``batch_size=None``: the dataset yields batches)."""
    ds = DistilledDataset(store, epoch, batch_size, labels, **kwargs)
    return DataLoader(ds, batch_size=None, num_workers=int(workers), pin_memory=pin_memory,
                      prefetch_factor=2 if workers else None)
