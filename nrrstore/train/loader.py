"""Streaming a store for student training: whole batches of replayed views with their labels.

Each batch is the teacher's exact view of its images for one epoch (same decode, same renderer:
:mod:`nrrstore.replay.stream`), with the label columns the student needs: ``images`` (normalized
float [B,C,S,S]), ``y``, ``y_partner``, ``lam``, ``index`` (store positions), and
``d_org``/``d_aug`` (DBR, float32) or ``soft`` (KD probabilities, float32) when asked.

Splitting, so that any number of ranks and workers see one well-defined sequence:
- batch ``b`` of an epoch is ``plan.order[b*B:(b+1)*B]`` (the last one may be short unless
  ``drop_last``); rank ``r`` of ``W`` takes the batches ``b % W == r`` among the first
  ``floor(nb / W) * W``, so every rank gets the same number of batches;
- DataLoader workers decode whole partner groups (work item ``j`` to worker ``j % workers``) and
  send uint8 images; the consumer renders them on ``device``: 0 and N workers yield the same
  batches, and no image is decoded twice in an epoch;
- resuming at ``(epoch, step)`` is ``start_step=step``; a checkpointed loader resumes with
  :meth:`DistilledLoader.state_dict` / :meth:`DistilledLoader.load_state_dict`.

A store is a local folder or a URL (s3://, gs://, http(s)://, through :mod:`nrrstore.format.fs`): an
epoch costs its own row groups and each partner group one range request per shard it touches.
The distance table is read for the current epoch only (its row groups), never the other epochs.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from nrrstore.devices import resolve_device
from nrrstore.errors import NrrError, NrrWarning
from nrrstore.format.codecs import CodecLabels, label_mode
from nrrstore.format.distances import EpochLabels, read_epoch_labels
from nrrstore.format.layout import LABEL_FILE_KINDS
from nrrstore.format.manifest import Manifest
from nrrstore.format.reader import Store
from nrrstore.format.shard_cache import shard_cache
from nrrstore.format.softlabels import SoftLabels
from nrrstore.format.verify import label_array_problems
from nrrstore.ranks import resolve_rank
from nrrstore.replay.recipe import store_recipe
from nrrstore.replay.stream import BatchAssembler, ViewStream, assemble, pin_default
from nrrstore.replay.views import ViewBatch
from nrrstore.replay.workers import ItemSource, worker_count, worker_items

LOADER_STATE_FORMAT = "nrrstore-loader"
LOADER_STATE_VERSION = 1


def open_store(store: Store | str | os.PathLike[str]) -> Store:
    """A `Store` for a folder or URL (an open `Store` is passed through)."""
    return store if isinstance(store, Store) else Store(store)


def _label_identity(m: Manifest) -> str:
    """What pins a store's labels: their manifest section and the checksums of their files."""
    files = sorted((f.path, f.sha256) for f in m.files if f.kind in LABEL_FILE_KINDS)
    return json.dumps([m.labels, files], sort_keys=True, default=str)


def to_chw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxW / HxWx3 array -> uint8 [C, H, W] tensor (owning its memory)."""
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


_MEANING_CHECKED: set[tuple[str, str, str]] = set()
"""Label arrays (store, manifest digest, names) this process has read through for their meaning."""


def _check_label_meaning(st: Store, names: set[str], codec: str) -> None:
    """Read the label arrays a student will train on through ``verify``'s meaning checks, once per process: their
    checksums may agree (a forged manifest, a foreign array) while the values are no labels (ids out of range or
    repeated, probabilities that sum past 1, NaN). What verify rejects, nobody trains on."""
    if codec:
        names = names | {codec}
    key = (str(st.path), _label_identity(st.manifest), ",".join(sorted(names)))
    if not names or key in _MEANING_CHECKED:
        return
    problems = label_array_problems(st, only=names)
    if problems:
        raise NrrError(None, f"{problems[0]} (nothing was trained on it; `nrrstore verify` lists every problem)")
    _MEANING_CHECKED.add(key)


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
    ``cache_mb``: decoded images kept in memory that the workers share (see
    :class:`~nrrstore.replay.stream.ImageBlocks`): a store that fits is decoded once, in the first epoch.
    ``cache_dir``: a local folder where a remote store's shards are kept after their first read (at most
    ``cache_bytes``, default 20 GiB; a number or ``"50GiB"``), so later epochs read no shard bytes remotely
    (:mod:`nrrstore.format.shard_cache`); default ``$NRRSTORE_CACHE_DIR`` (``$NRRSTORE_CACHE_SIZE``), else
    none. A `Store` opened with its own ``cache`` keeps it unless ``cache_dir`` is given. Local stores are
    never cached.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        epoch: int = 0,
        batch_size: int = 100,
        labels: str = "dbr",
        *,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
        normalize: bool = True,
        cycle: bool = False,
        softlabels: bool = False,
        drop_last: bool = False,
        num_epochs: int = 1,
        cache_mb: int = 256,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int | str | None = None,
    ) -> None:
        st = open_store(store)
        st.check_checksums()  # a file edited in place is refused here, not trained on (once per process)
        if cache_dir is not None or st.cache is None:
            cache = shard_cache(cache_dir, cache_bytes)
            if cache is not None:
                st = st.with_cache(cache)  # a copy: the caller's Store is left as it was
        m = st.manifest
        labels = label_mode(labels, m.num_classes)
        recipe = store_recipe(m, st.manifest_path)
        dist = m.labels.get("distances") or {}
        explicit = dist.get("mode", "seeded") == "explicit"
        rank, world_size = resolve_rank(rank, world_size)
        super().__init__(st, recipe, batch_size, [], [], rank=rank, world_size=world_size, drop_last=drop_last,
                         cache_mb=cache_mb, explicit=explicit)
        self.root = st.path
        self.index_sha256 = m.index_sha256
        self._label_pin = _label_identity(m)  # workers open the store again: they must find these labels
        self.labels = labels
        self.want_soft = softlabels or labels == "kd"
        self.want_distances = labels == "dbr" or labels.startswith("dbrc:")
        if self.want_distances and not dist:
            raise NrrError(st.path, "store has no DBR distances (labels.distances); run `nrrstore relabel` first, "
                                    "or train with labels='onehot'")
        self._codec_section = self._codec_of(st, labels)
        self._soft_section: dict[str, Any] = m.labels.get("softlabels") or {}
        if self.want_soft and not self._soft_section:
            raise NrrError(st.path, "store has no soft labels (labels.softlabels); relabel with --full-softlabels "
                                    "to train with labels='kd'")
        stored = [int(dist["epochs"])] if dist else []
        if self._soft_section:
            stored.append(int(self._soft_section["shape"][0]))
        if self._codec_section:
            stored.append(int(self._codec_section["shape"][0]))
        _check_label_meaning(st, {"soft labels"} if self.want_soft else set(), labels if self._codec_section else "")
        self.stored_epochs = min(stored) if stored else 0
        self.needs_stored = labels != "onehot" or self.want_soft or explicit
        self.num_classes = m.num_classes
        self.cycle = cycle
        norm = m.normalization if normalize else None
        self.mean = None if norm is None else [float(v) for v in norm["mean"]]
        self.std = None if norm is None else [float(v) for v in norm["std"]]
        self._store: Store | None = st
        self.set_epoch(epoch, start_step, num_epochs)

    @staticmethod
    def _codec_of(st: Store, labels: str) -> dict[str, Any]:
        """The manifest entry of the codec arrays ``labels`` reads (empty for modes without arrays)."""
        if ":" not in labels or labels == "dbrc:0":
            return {}
        entry = (st.manifest.labels.get("codecs") or {}).get(labels) or {}
        if not entry.get("fields"):
            have = ", ".join(st.manifest.labels.get("codecs") or {}) or "none"
            raise NrrError(st.path, f"store has no {labels} labels (it has: {have}); relabel with "
                                    f"--labels dbr,{labels}")
        return dict(entry)

    # -- epochs ----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_step: int = 0, num_epochs: int = 1) -> None:
        """Point the dataset at other epochs (before creating the DataLoader iterator)."""
        for name, v in (("epoch", epoch), ("start step", start_step), ("number of epochs", num_epochs - 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise NrrError(None, f"{name} must be a non-negative integer, got {v!r}")
        self.epoch, self.start_step, self.num_epochs = int(epoch), int(start_step), int(num_epochs)
        epochs = list(range(self.epoch, self.epoch + self.num_epochs))
        views = [self._resolve_epoch(e) for e in epochs]
        cycled = [(e, v) for e, v in zip(epochs, views, strict=True) if e != v]
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
    def _epoch_labels(self, view_epoch: int) -> tuple[EpochLabels | None, _BlockCache | None, Any, _BlockCache | None]:
        if self._store is None:
            store = open_store(self.root)
            if _label_identity(store.manifest) != self._label_pin:
                raise NrrError(self.root, "the store's labels changed since this loader was made (relabelled "
                                          "meanwhile?); make a new loader to read the new version")
            self._store = store
        stored = views = None
        if self.want_distances or self.explicit:
            stored = read_epoch_labels(self._store, view_epoch, need_distances=self.want_distances)
            if stored.views is not None:
                views = ViewBatch.from_columns(stored.views, stored.where)
        soft = codec = None
        g, n = self.recipe.group_size, self.num_images
        if self.want_soft:
            arr = SoftLabels(self.root, self._soft_section)
            soft = _BlockCache(lambda e, a, b: {"soft": arr.read(e, a, b)}, view_epoch, g, n)
        if self._codec_section:
            codec = _BlockCache(CodecLabels(self.root, self.labels, self._codec_section, self.num_classes).read, view_epoch, g, n)
        return stored, soft, views, codec

    def _explicit_views(self, context: Any) -> tuple[ViewBatch, np.ndarray] | None:
        return context[2]

    def _item_labels(self, context: Any, own: np.ndarray) -> dict[str, torch.Tensor]:
        stored, soft, _, codec = context
        out: dict[str, torch.Tensor] = {}
        if self.want_distances:
            assert stored is not None and stored.d_org is not None and stored.d_aug is not None
            out["d_org"] = torch.from_numpy(stored.d_org[own])
            out["d_aug"] = torch.from_numpy(stored.d_aug[own])
        if soft is not None:
            out["soft"] = torch.from_numpy(soft.take(own)["soft"])
        if codec is not None:
            fields = codec.take(own)
            out["codec_ids"] = torch.from_numpy(fields.pop("ids"))
            out["codec_values"] = torch.from_numpy(next(iter(fields.values())))
        return out

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the store themselves
        state = dict(self.__dict__)
        state["_store"] = None
        return state


class _BlockCache:
    """One epoch's labels of an array codec (or the soft labels), read a block of consecutive images at a time
    (zarr chunk friendly): ``read(epoch, start, stop) -> {field: [stop - start, K]}``."""

    def __init__(self, read: Callable[[int, int, int], dict[str, np.ndarray]], epoch: int, block: int, n: int,
                 max_blocks: int = 8) -> None:
        self.read, self.epoch, self.block, self.n, self.max_blocks = read, epoch, block, n, max_blocks
        self.cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        g = self.block
        out: dict[str, np.ndarray] = {}
        for blk in np.unique(idx // g).tolist():
            if blk not in self.cache:
                self.cache[blk] = self.read(self.epoch, blk * g, min((blk + 1) * g, self.n))
                while len(self.cache) > self.max_blocks:
                    self.cache.popitem(last=False)
            rows = np.flatnonzero(idx // g == blk)
            for field, values in self.cache[blk].items():
                if field not in out:
                    out[field] = np.empty((len(idx), *values.shape[1:]), values.dtype)
                out[field][rows] = values[idx[rows] - blk * g]
        return out


class DistilledLoader:
    """Batches of a :class:`DistilledDataset`: decoded by DataLoader workers, rendered here on ``device``.

    Workers send uint8 images (a quarter of float32's bytes); rendering, float conversion and
    normalization run in this process, on the GPU when ``device`` is one, with pinned memory and
    asynchronous copies. ``decoded`` counts the images decoded during the last pass.

    Checkpointing, as torchdata's ``StatefulDataLoader``, mosaicml-streaming and litdata offer it:
    :meth:`state_dict` says where the loader stands (plain numbers, for ``torch.save`` or JSON) and
    :meth:`load_state_dict` on a loader of the same store makes its next pass yield exactly the
    batches the saved one had not yet yielded; the passes after that are whole again.
    """

    def __init__(self, dataset: DistilledDataset, workers: int | None = 0, device: str | torch.device = "cpu",
                 pin_memory: bool | None = None, prefetch_factor: int | None = None) -> None:
        self.dataset = dataset
        self.workers = worker_count(workers)
        self.device = resolve_device(device)
        self.pin_memory = pin_default(self.device) if pin_memory is None else bool(pin_memory)
        self.prefetch_factor = prefetch_factor
        self.decoded = 0
        self._yielded = 0  # batches of the current pass handed out (0: no pass under way)
        self._resume_at = 0  # batches the next pass skips (set by load_state_dict)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip, self._resume_at = self._resume_at, 0
        self._yielded = skip
        return self._batches(skip)

    def _batches(self, skip: int) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        assembler = BatchAssembler(ds.recipe, ds.channels, self.device, ds.mean, ds.std)
        if self.workers:
            items: Any = worker_items(ItemSource(ds, skip), self.workers, self.pin_memory, self.prefetch_factor or 2)
        else:
            items = ds.items(skip=skip)
        try:
            for item in items:
                if self.pin_memory and not self.workers:
                    item = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
                for batch in assembler.feed(item):
                    self._yielded += 1  # before handing it out: a state taken now must not yield it again
                    yield batch
            expected = len(ds.epochs) * len(ds.rank_batches()) - ds.start_step
            if self._yielded < expected:  # a worker ended early: a short pass must not pass for a whole one
                raise NrrError(ds.root, f"the loader ended after {self._yielded} of {expected} batches (a decoding "
                                        "worker stopped early); rerun with --workers 0 to see the cause")
            self._yielded = 0  # the pass is complete: the next one starts afresh
        finally:
            self.decoded = assembler.decoded

    # -- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: its pass (first epoch, start step, epochs), the batches of it already
        yielded, and the ``(epoch, step)`` of the next batch, plus what a restored loader must share."""
        ds = self.dataset
        per_epoch = len(ds.rank_batches())
        done = ds.start_step + self._yielded  # this rank's batches of the pass, counted from its first epoch
        following = None
        if per_epoch and done < ds.num_epochs * per_epoch:
            following = {"epoch": ds.epoch + done // per_epoch, "step": done % per_epoch}
        return {
            "format": LOADER_STATE_FORMAT, "version": LOADER_STATE_VERSION,
            "epoch": ds.epoch, "start_step": ds.start_step, "num_epochs": ds.num_epochs,
            "batches_yielded": self._yielded, "next": following, **self._identity(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where a :meth:`state_dict` of a loader over the same store and batches left off.

        Refuses (one line) a state of another store, recipe, batch size, split over ranks or label
        mode, whose numbers would mean other batches. A state from any rank fits every rank: all
        ranks yield the same number of batches per epoch.
        """
        if not isinstance(state, dict) or state.get("format") != LOADER_STATE_FORMAT:
            raise NrrError(None, "not an nrrstore loader state (from DistilledLoader.state_dict)")
        if state.get("version") != LOADER_STATE_VERSION:
            raise NrrError(None, f"loader state version {state.get('version')!r} is not supported "
                                 f"(this nrrstore reads version {LOADER_STATE_VERSION})")
        mine = self._identity()
        differ = sorted(k for k in mine if state.get(k) != mine[k])
        if differ:
            raise NrrError(None, f"the loader state belongs to another loader ({', '.join(differ)} differ); "
                                 "restore it into a loader of the same store with the same batches")
        try:
            epoch, start, count, yielded = (int(state[k]) for k in ("epoch", "start_step", "num_epochs",
                                                                     "batches_yielded"))
        except (KeyError, TypeError, ValueError):
            raise NrrError(None, "malformed loader state (epoch, start_step, num_epochs, batches_yielded)") from None
        if yielded < 0:
            raise NrrError(None, f"malformed loader state: batches_yielded {yielded}")
        self.dataset.set_epoch(epoch, start, count)
        self._resume_at = yielded
        self._yielded = yielded

    def _identity(self) -> dict[str, Any]:
        """What decides which batches a step number means: a restored loader must agree on all of it."""
        ds = self.dataset
        return {"store_index_sha256": ds.index_sha256, "augmentation": ds.recipe.to_dict(),
                "batch_size": ds.batch_size, "world_size": ds.world_size, "drop_last": ds.drop_last,
                "labels": ds.labels}


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
    cache_dir: str | os.PathLike[str] | None = None,
    cache_bytes: int | str | None = None,
    **kwargs: Any,
) -> DistilledLoader:
    """Batches of a store on ``device``, decoded by ``workers`` processes (see :class:`DistilledLoader`).

    ``pin_memory`` defaults to on for CUDA devices; ``prefetch_factor`` (items per worker in
    flight, default 2); ``cache_dir``/``cache_bytes``: the local cache of a remote store's shards
    (see :class:`DistilledDataset`); other keyword arguments go to :class:`DistilledDataset`.
    """
    ds = DistilledDataset(store, epoch, batch_size, labels, cache_dir=cache_dir, cache_bytes=cache_bytes, **kwargs)
    return DistilledLoader(ds, workers, device, pin_memory, prefetch_factor)
