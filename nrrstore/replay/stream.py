"""From a store to rendered batches: decoding workers send uint8 images, the consumer renders.

Shared by the student's loader (:mod:`nrrstore.train.loader`) and by relabeling
(:mod:`nrrstore.labels.relabel`), so the teacher and the student see the same views.

**Work items.** Batch ``b`` of an epoch is ``plan.order[b*B:(b+1)*B]``; the visiting order is
made of whole partner groups (see :func:`~nrrstore.replay.recipe.epoch_plan`). A *work item* is
one partner group's share of this rank's batches: the group's images decoded once, as one uint8
tensor, with the view parameters and resize taps of each view, cut into *pieces* (the rows of each
batch that the group fills). Items are numbered across the epochs and item ``j`` goes to
DataLoader worker ``j % workers``, the order in which DataLoader hands results back, so every
worker count yields the same sequence and no image is decoded twice in an epoch (partners lie in
the same group; explicit stores, whose partners can lie anywhere, decode those few extra).

**Consumer.** :class:`BatchAssembler` moves each item's uint8 images to its device (pinned and
asynchronous on CUDA), renders all of the item's views in one batched call
(:class:`~nrrstore.replay.render.Renderer`), mixes and normalizes them into the rows of their
batch, and hands a batch out as soon as its last piece has arrived. Float pixels never cross a
process boundary.

**Decode cache.** :class:`ImageBlocks` keeps decoded groups in memory that this process and its
workers share (:mod:`~nrrstore.replay.shared_pixels`), so a group is decoded once per pass, whichever
worker gets it in a later epoch; without shared memory, in a per-process LRU whose cap counts the bytes
the tensors really hold.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nrrstore.errors import NrrError
from nrrstore.format.images import decode_image
from nrrstore.format.reader import Store
from nrrstore.replay.recipe import AugRecipe, EpochPlan, epoch_plan, view_params_batch
from nrrstore.replay.render import Renderer, Taps, from_xmajor, to_xmajor, view_taps
from nrrstore.replay.render_v1 import mix_views, render_view
from nrrstore.replay.shared_pixels import SharedPixels
from nrrstore.replay.views import ViewBatch, ViewParams, check_crops

BLOCK_OVERHEAD = 1024
"""Bytes charged per cached block on top of its pixels (tensor and dict bookkeeping)."""


# -- decoding ------------------------------------------------------------------------------------------
class ImageBlocks:
    """Decoded images of a store by block of ``block`` consecutive positions, uint8 x-major ``[n, C, W, H]``.

    Why blocks: a partner group is consecutive in store order and so in one shard (or two): one
    ranged read per shard, one allocation per block. Decoded blocks go to a region of memory that this
    process and its loader workers share (:mod:`nrrstore.replay.shared_pixels`), as many of the first
    blocks as fit in ``cache_mb``; where no shared region can be made (or ``shared`` is False), to an LRU
    of at most ``cache_mb`` of pixel tensors per process. ``decoded`` counts this process's decodes.
    """

    def __init__(self, store: Store, block: int, cache_mb: int = 256, shared: bool = True) -> None:
        idx = store.index
        n = idx.num_rows
        if not np.array_equal(idx.column("image").to_numpy(), np.arange(n)):
            raise NrrError(store.index_path, "index rows are not images 0..N-1 in order")
        shards = idx.column("shard").to_pylist()
        self.shards = list(dict.fromkeys(shards))
        code = {s: i for i, s in enumerate(self.shards)}
        self.shard_id = np.array([code[s] for s in shards], dtype=np.int32)
        self.offset = idx.column("offset").to_numpy().astype(np.int64)
        self.size = idx.column("size").to_numpy().astype(np.int64)
        self.keys = idx.column("key").to_pylist()
        self.store = store
        self.num_images = n
        self.block = max(1, int(block))
        im = store.manifest.image
        self.shape = (im.channels, im.width, im.height)
        self.cap = int(cache_mb) * 2**20
        self.cached_bytes = 0
        self.decoded = 0
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        block_bytes = self.block * math.prod(self.shape)
        fits = min(-(-n // self.block), self.cap // block_bytes)
        self._shared = SharedPixels.create(fits, self.block, self.shape) if shared else None
        if self._shared is not None:
            self.cap = 0  # the shared region is the cache: no second copy per process

    def _read(self, shard: int, lo: int, hi: int) -> bytes:
        try:
            return self.store._read_span(self.shards[shard], lo, hi - lo)
        except OSError as exc:
            raise NrrError(self.store.path / self.shards[shard], f"cannot read shard: {exc.strerror or exc}") from None

    def decode_positions(self, positions: np.ndarray) -> torch.Tensor:
        """uint8 ``[len, C, W, H]`` of these positions, decoded now (runs in one shard: one read)."""
        positions = np.asarray(positions, np.int64)
        out = np.empty((len(positions), *self.shape), np.uint8)
        k = 0
        while k < len(positions):
            j = k + 1  # extend a run of consecutive positions in one shard
            while (j < len(positions) and positions[j] == positions[j - 1] + 1
                   and self.shard_id[positions[j]] == self.shard_id[positions[k]]):
                j += 1
            first, last = int(positions[k]), int(positions[j - 1])
            lo, hi = int(self.offset[first]), int(self.offset[last] + self.size[last])
            data = memoryview(self._read(int(self.shard_id[first]), lo, hi))
            for r, p in enumerate(range(first, last + 1), start=k):
                a = int(self.offset[p]) - lo
                where = f"{self.store.path / self.shards[self.shard_id[p]]}:{self.keys[p]}"
                pixels = to_xmajor(decode_image(bytes(data[a:a + int(self.size[p])]), where))
                if pixels.shape != self.shape:
                    raise NrrError(where, f"image is {pixels.shape[2]}x{pixels.shape[1]}x{pixels.shape[0]}, the "
                                          f"store says {self.shape[2]}x{self.shape[1]}x{self.shape[0]}")
                out[r] = pixels
            k = j
        self.decoded += len(positions)
        return torch.from_numpy(out)

    def block_pixels(self, b: int) -> torch.Tensor:
        """The images of block ``b`` (from the cache when there)."""
        if self._shared is not None and b < self._shared.count:
            start = b * self.block
            rows = min(self.block, self.num_images - start)
            return self._shared.fill(b, rows, lambda: self.decode_positions(np.arange(start, start + rows)))
        hit = self._cache.get(b)
        if hit is not None:
            self._cache.move_to_end(b)
            return hit
        start = b * self.block
        pixels = self.decode_positions(np.arange(start, min(start + self.block, self.num_images)))
        cost = pixels.untyped_storage().nbytes() + BLOCK_OVERHEAD
        if cost <= self.cap:
            self._cache[b] = pixels
            self.cached_bytes += cost
            while self.cached_bytes > self.cap:
                _, old = self._cache.popitem(last=False)
                self.cached_bytes -= old.untyped_storage().nbytes() + BLOCK_OVERHEAD
        return pixels

    def pixels(self, positions: np.ndarray, home: int) -> torch.Tensor:
        """uint8 ``[len, C, W, H]`` of ``positions``: those in block ``home`` (or another cached block)
        from the cache, the rest (explicit stores' far partners) decoded one by one."""
        positions = np.asarray(positions, np.int64)
        blocks = positions // self.block
        if np.all(blocks == home):
            return self.block_pixels(home)[positions - home * self.block]
        out = torch.empty((len(positions), *self.shape), dtype=torch.uint8)
        home_px = self.block_pixels(home)
        rows = np.flatnonzero(blocks == home)
        out[rows] = home_px[positions[rows] - home * self.block]
        far = np.flatnonzero(blocks != home)
        cached = np.array([self._holds(int(b)) for b in blocks[far]], dtype=bool)
        for r in far[cached]:
            b = int(blocks[r])
            out[r] = self.block_pixels(b)[positions[r] - b * self.block]
        todo = far[~cached]
        if todo.size:
            order = np.argsort(positions[todo], kind="stable")
            out[todo[order]] = self.decode_positions(positions[todo][order])
        return out

    def _holds(self, b: int) -> bool:
        """Whether block ``b`` is decoded already (in the shared region, or this process's LRU)."""
        if self._shared is not None and b < self._shared.count:
            return self._shared.has(b)
        return b in self._cache

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty LRU (the shared region goes along)
        return {**self.__dict__, "_cache": OrderedDict(), "cached_bytes": 0, "decoded": 0}


# -- planning ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Rows ``offset .. offset+stop-start`` of this rank's batch ``step`` (``size`` rows in all) are
    the images ``plan.order[start:stop]`` (all in one partner group)."""

    step: int
    offset: int
    size: int
    start: int
    stop: int


def plan_items(plan: EpochPlan, batches: list[tuple[int, int]], batch_size: int) -> list[tuple[int, list[Piece]]]:
    """The work items of one epoch: ``(group, pieces)`` in visiting order.

    ``batches``: ``(step, b)`` pairs, this rank's batches in order (b = global batch number).
    """
    n = len(plan.order)
    g = plan.group_size
    glen = np.minimum((plan.groups + 1) * g, n) - plan.groups * g
    run_start = np.concatenate([[0], np.cumsum(glen)]).astype(np.int64)  # visiting-order span of each group
    items: list[tuple[int, list[Piece]]] = []
    for step, b in batches:
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        r = int(np.searchsorted(run_start, lo, side="right")) - 1
        while r < len(glen) and run_start[r] < hi:
            a, z = max(lo, int(run_start[r])), min(hi, int(run_start[r + 1]))
            piece = Piece(step, a - lo, hi - lo, a, z)
            group = int(plan.groups[r])
            if items and items[-1][0] == group:
                items[-1][1].append(piece)
            else:
                items.append((group, [piece]))
            r += 1
    return items


class ViewStream:
    """Work items (see the module docstring) of ``view_epochs`` of a store (:class:`ItemSource` feeds
    them to a DataLoader's workers).

    ``epochs``: the epoch numbers the batches carry; ``view_epochs``: the stored/seeded epochs
    whose views they replay (they differ when cycling). Batches are split over ranks as
    ``b % world_size == rank`` among the first ``floor(nb / world) * world``, so every rank gets
    the same number; ``start_step`` skips that many of this rank's batches of the first epoch.
    Subclasses add label columns through :meth:`_epoch_labels` and :meth:`_item_labels`.
    """

    def __init__(self, store: Store, recipe: AugRecipe, batch_size: int, epochs: list[int], view_epochs: list[int],
                 *, rank: int = 0, world_size: int = 1, start_step: int = 0, drop_last: bool = False,
                 cache_mb: int = 256, explicit: bool = False) -> None:
        if batch_size < 1:
            raise NrrError(None, f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise NrrError(None, f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        m = store.manifest
        self.recipe = recipe
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.start_step, self.drop_last = int(start_step), bool(drop_last)
        self.epochs, self.view_epochs = list(epochs), list(view_epochs)
        self.num_images, self.channels = m.num_images, m.image.channels
        self.height, self.width = m.image.height, m.image.width
        self.explicit = explicit
        self._labels = store.labels()
        self._blocks = ImageBlocks(store, recipe.group_size, cache_mb)

    # -- batches ---------------------------------------------------------------------------------------
    @property
    def num_batches(self) -> int:
        """Batches of the whole epoch, before splitting over ranks."""
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def rank_batches(self) -> list[int]:
        """Global batch numbers of this rank in one epoch, in order (equal count on every rank)."""
        usable = (self.num_batches // self.world_size) * self.world_size
        return list(range(self.rank, usable, self.world_size))

    @property
    def num_rank_batches(self) -> int:
        """Batches this rank yields over all its epochs."""
        return max(0, len(self.epochs) * len(self.rank_batches()) - self.start_step)

    # -- items -------------------------------------------------------------------------------------------
    def items(self, worker: int = 0, workers: int = 1, skip: int = 0) -> Iterator[dict[str, Any]]:
        """This worker's share of the work items, in order (item j goes to worker j % workers).

        ``skip``: further batches to leave out after ``start_step`` (a resumed pass).
        """
        mine = list(enumerate(self.rank_batches()))
        j, skip = 0, self.start_step + skip  # start_step counts this rank's batches across the epochs
        for epoch, view_epoch in zip(self.epochs, self.view_epochs, strict=True):
            batches, skip = mine[skip:], max(0, skip - len(mine))
            if not batches:
                continue
            plan = epoch_plan(self.recipe, view_epoch, self.num_images)
            context = None
            for group, pieces in plan_items(plan, batches, self.batch_size):
                if j % workers == worker:
                    if context is None:
                        context = self._epoch_labels(view_epoch)
                    yield self._item(plan, epoch, group, pieces, context)
                j += 1

    def _epoch_labels(self, view_epoch: int) -> Any:
        """What an epoch's items need from the label files (None here; see `DistilledDataset`)."""
        return None

    def _explicit_views(self, context: Any) -> tuple[ViewBatch, np.ndarray] | None:
        """The stored view parameters and partners of an explicit store's epoch (None: seeded)."""
        return None

    def _item_labels(self, context: Any, own: np.ndarray) -> dict[str, torch.Tensor]:
        return {}

    def _item(self, plan: EpochPlan, epoch: int, group: int, pieces: list[Piece], context: Any) -> dict[str, Any]:
        own = np.concatenate([plan.order[p.start:p.stop] for p in pieces])
        stored = self._explicit_views(context)
        partner = plan.partner[own] if stored is None else stored[1][own]
        extra = np.setdiff1d(partner, own)
        need = np.concatenate([own, extra])
        sorter = np.argsort(need, kind="stable")
        partner_rows = sorter[np.searchsorted(need[sorter], partner)]
        if stored is None:
            views = view_params_batch(self.recipe, plan.epoch, need, self.height, self.width)
        else:
            views = stored[0].take(need)
            check_crops(views, self.height, self.width)
        taps = view_taps(views.crop_i, views.crop_j, views.crop_h, views.crop_w, views.flip, self.recipe.size)
        before = self._blocks.decoded
        pixels = self._blocks.pixels(need, group)
        mine = views.take(np.arange(len(own)))
        item = {
            "epoch": epoch, "view_epoch": plan.epoch,
            "pieces": torch.tensor([[p.step, p.offset, p.size, p.stop - p.start] for p in pieces], dtype=torch.int64),
            "pixels": pixels, "partner": torch.from_numpy(partner_rows), "index": torch.from_numpy(own),
            "y": torch.from_numpy(self._labels[own]), "y_partner": torch.from_numpy(self._labels[partner]),
            "lam": torch.from_numpy(mine.lam), "boxes": torch.from_numpy(mine.boxes()),
            "x_index": torch.from_numpy(taps.x_index), "x_weight": torch.from_numpy(taps.x_weight),
            "y_index": torch.from_numpy(taps.y_index), "y_weight": torch.from_numpy(taps.y_weight),
            "decoded": self._blocks.decoded - before,
        }
        if self.recipe.version == 1:  # the per-view renderer needs the crops themselves
            item["crops"] = torch.from_numpy(np.stack([views.crop_i, views.crop_j, views.crop_h, views.crop_w], 1))
            item["flip"] = torch.from_numpy(views.flip.copy())
        item.update(self._item_labels(context, own))
        return item


# -- the consumer -----------------------------------------------------------------------------------
LABEL_KEYS = ("y", "y_partner", "lam", "index", "d_org", "d_aug", "soft", "codec_ids", "codec_values")


class OutputPool:
    """Batch image tensors on the CPU, reused once the training loop has let go of them.

    Why: a fresh 60 MB batch (100 views at 224 px) is fresh pages, and on the CPU their page faults
    cost about as much as rendering it. A buffer is reused only when nothing but this pool refers
    to its memory (torch's storage use count), so a batch the caller keeps is never overwritten.
    On other devices the caching allocator already does this; tensors are allocated plainly.
    """

    def __init__(self, device: torch.device, size: int = 4) -> None:
        self.device, self.size = device, size
        self.buffers: list[torch.Tensor] = []

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        numel = int(np.prod(shape))
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=torch.float32, device=self.device)
        for buf in self.buffers:
            if buf.numel() >= numel and _only_pool_holds(buf):
                return buf[:numel].view(shape)
        buf = torch.empty(numel, dtype=torch.float32)
        if len(self.buffers) < self.size:
            self.buffers.append(buf)
        return buf.view(shape)


def _only_pool_holds(buf: torch.Tensor) -> bool:
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:  # an older or newer torch without it: never reuse
        return False
    try:
        return int(count(buf.untyped_storage()._cdata)) <= 2  # the pool's tensor + the handle asked here
    except (RuntimeError, TypeError, AttributeError):
        return False


class BatchAssembler:
    """Turns work items into batches on ``device``: render, mix, normalize (``mean``/``std`` or [0, 1])."""

    def __init__(self, recipe: AugRecipe, channels: int, device: str | torch.device = "cpu",
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        self.recipe = recipe
        self.device = torch.device(device)
        self.renderer = Renderer(recipe.size, channels, self.device, mean, std)
        self.mean, self.std = mean, std
        self.decoded = 0
        self.outputs = OutputPool(self.device)
        self._views: torch.Tensor | None = None
        self._open: dict[str, Any] | None = None

    def _workspace(self, rows: int) -> torch.Tensor:
        numel = rows * self.renderer.channels * self.renderer.size ** 2
        if self._views is None or self._views.numel() < numel:
            self._views = torch.empty(numel, dtype=torch.float32, device=self.device)
        return self._views

    def feed(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The batches that ``item`` completes (zero, one or more)."""
        self.decoded += int(item["decoded"])
        dev = self.device
        moved = {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) and k in LABEL_KEYS else v)
                 for k, v in item.items()}
        partner = item["partner"].numpy()
        lam, boxes = item["lam"].numpy(), item["boxes"].numpy()
        views = None
        if self.recipe.version >= 2:
            taps = Taps(item["x_index"].numpy(), item["x_weight"].numpy(), item["y_index"].numpy(),
                        item["y_weight"].numpy())
            views = self.renderer.render(item["pixels"], taps, out=self._workspace(len(taps)))
        row = 0
        for step, offset, size, count in item["pieces"].tolist():
            if offset == 0:
                self._open = {"images": self.outputs.get((size, self.renderer.channels, self.recipe.size,
                                                          self.recipe.size)),
                              "epoch": int(item["epoch"]), "step": int(step), "parts": []}
            batch = self._open
            assert batch is not None and batch["step"] == step, "work items arrived out of order"
            dst = batch["images"][offset:offset + count]
            if views is not None:
                self.renderer.mix(views, np.arange(row, row + count), partner[row:row + count], self.recipe.mix,
                                  lam[row:row + count], boxes[row:row + count], out=dst)
            else:
                dst.copy_(self._legacy(item, row, count))
            batch["parts"].append({k: moved[k][row:row + count] for k in LABEL_KEYS if k in moved})
            row += count
            if offset + count == size:
                self._open = None
                yield self._finish(batch)

    def _finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        parts = batch.pop("parts")
        out = {"images": batch["images"]}
        for k in parts[0]:
            out[k] = parts[0][k] if len(parts) == 1 else torch.cat([p[k] for p in parts])
        out["epoch"], out["step"] = batch["epoch"], batch["step"]
        return out

    def _legacy(self, item: dict[str, Any], row: int, count: int) -> torch.Tensor:
        """Recipe version 1: the per-view renderer, normalized channel by channel as it always was."""
        pixels, crops, flip = item["pixels"], item["crops"].numpy(), item["flip"].numpy()
        lam, boxes, partner = item["lam"].numpy(), item["boxes"].numpy(), item["partner"].numpy()
        cache: dict[int, torch.Tensor] = {}

        def params(r: int, weight: float, box: Sequence[int]) -> ViewParams:
            i, j, h, w = crops[r].tolist()
            y1, x1, y2, x2 = box
            return ViewParams(i, j, h, w, bool(flip[r]), weight, y1, x1, y2, x2)

        def view(r: int) -> torch.Tensor:
            if r not in cache:
                cache[r] = render_view(from_xmajor(pixels[r]).to(self.device), params(r, 1.0, (0, 0, 0, 0)),
                                       self.recipe.size)
            return cache[r]

        views = torch.stack([
            mix_views(view(r), view(int(partner[r])), params(r, float(lam[r]), boxes[r].tolist()), self.recipe.mix)
            for r in range(row, row + count)])
        if self.mean is not None and self.std is not None:
            for c, (mean, std) in enumerate(zip(self.mean, self.std, strict=True)):
                views[:, c].sub_(mean).div_(std)
        return views


def assemble(items: Iterable[dict[str, Any]], assembler: BatchAssembler) -> Iterator[dict[str, Any]]:
    """Batches from a sequence of work items."""
    for item in items:
        yield from assembler.feed(item)


def pin_default(device: torch.device) -> bool:
    """Pinned host memory pays off only when batches go to a CUDA device."""
    return device.type == "cuda"
