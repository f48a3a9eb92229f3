"""Batched view rendering (augmentation recipe version 2): crop, resize, flip, mix and normalize.

Version 1 rendered one view at a time (``F.interpolate`` per crop, a Python loop per view); at
224 px that loop, not the arithmetic, was the cost. Version 2 renders a whole batch with a fixed
number of tensor operations on the CPU or on a GPU:

1. **Taps** (host, float64, basic IEEE operations only, so identical everywhere): for every view
   and output row/column, the source pixels and weights of torch's antialiased bilinear resize
   (the PIL/torchvision filter: triangle of support 1, widened by the scale when downsampling).
   A flip reverses the column taps; crops are offsets into the source indices.
2. **Two separable passes**, each one ``embedding_bag(mode="sum", per_sample_weights)``: a fused
   gather + weighted sum of whole source rows. Images are held *x-major* (``[C, W, H]``, see
   :func:`to_xmajor`), so pass 1 gathers source columns; its result is transposed once and pass 2
   gathers rows. The per-channel scale of the normalization is folded into pass 1's weights.
3. **Mixing** as arithmetic on whole batches, ``own * a + partner * b`` (CutMix: ``a``/``b`` are
   the 0/1 box masks; MixUp: ``lam``/``1 - lam``), then the normalization's per-channel bias.

Exactness: every output pixel depends only on its own view (never on the other views of the
batch, the chunking, the thread count or the worker count), so the teacher's views and the
student's are bit-identical when rendered by this renderer on the same kind of device. Across
devices (CPU vs CUDA, or CPUs with other vector units) the last bits may differ, because
``embedding_bag`` may fuse multiply and add; `benchmarks/gpu_check.sh` measures that gap.

On the CPU the views are rendered in chunks of about a core's L2 cache: large temporaries are
fresh pages (page faults cost more than the arithmetic), chunk-sized ones stay in cache and are
recycled by malloc. Rendering runs on one intra-op thread: its operations are too small to share,
and on a busy machine an OpenMP team waiting for a descheduled thread made them many times slower
(benchmarks/render.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nrrstore.errors import NrrError
from nrrstore.replay.recipe import AugRecipe, EpochPlan, batch_views, check_epoch, view_params_batch
from nrrstore.replay.views import ViewBatch, check_crops

CHUNK_BYTES = 1300 * 1024
"""Largest float32 temporary of one CPU rendering step (about a core's L2 cache; measured best
in benchmarks/render.py: two 224 px RGB views per chunk)."""


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """torch on one intra-op thread for a CPU rendering step (the setting is process-wide, so it is
    restored right after; other threads' torch work meanwhile also runs on one thread)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_xmajor(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``HxW`` / ``HxWx3`` -> uint8 ``[C, W, H]``: the layout the renderer reads.

    Why x-major: pass 1 gathers whole source *columns*, which must be contiguous rows in memory.
    """
    a = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return np.ascontiguousarray(a.transpose(2, 1, 0))


def from_xmajor(block: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., C, W, H]`` -> ``[..., C, H, W]`` (a contiguous copy)."""
    return block.transpose(-1, -2).contiguous()


def resize_taps(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (int64 ``[V, size, K]``) and weights (float64) of resizing ``length`` -> ``size``.

    The filter is torch's ``interpolate(mode="bilinear", antialias=True, align_corners=False)``
    (aten ``_compute_weights_aa``): output pixel i is centred at ``scale * (i + 0.5)`` with
    ``scale = length / size``; the triangle filter has support 1, times ``scale`` when
    downsampling; weights are normalized to sum to 1. ``K`` is the largest tap count of the batch;
    shorter rows are padded with weight 0 on a valid index, which adds exactly nothing.
    Computed in float64 with basic operations only (no libm), so identical on every platform.
    """
    start = np.asarray(start, np.int64).reshape(-1, 1, 1)
    length = np.asarray(length, np.int64).reshape(-1, 1, 1)
    scale = length.astype(np.float64) / float(size)
    center = scale * (np.arange(size, dtype=np.float64).reshape(1, -1, 1) + 0.5)
    down = scale >= 1.0
    support = np.where(down, scale, 1.0)
    invscale = np.where(down, 1.0 / scale, 1.0)
    lo = np.maximum(np.trunc(center - support + 0.5), 0.0).astype(np.int64)
    hi = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), length)
    count = hi - lo
    k = int(count.max()) if count.size else 1
    j = np.arange(k, dtype=np.int64).reshape(1, 1, -1)
    w = 1.0 - np.abs((j + lo - center + 0.5) * invscale)
    w = np.where((j < count) & (w > 0.0), w, 0.0)
    total = w[..., 0].copy()
    for t in range(1, k):  # a fixed summation order, not numpy's pairwise one
        total = total + w[..., t]
    w = w / np.where(total > 0.0, total, 1.0)[..., None]
    index = start + np.minimum(lo + j, length - 1)
    return index, w


@dataclass(frozen=True, eq=False)
class Taps:
    """Resize taps of V views: column (``x``, flip applied) and row (``y``) indices and weights."""

    x_index: np.ndarray  # int64 [V, S, Kx], source columns
    x_weight: np.ndarray  # float64 [V, S, Kx]
    y_index: np.ndarray  # int64 [V, S, Ky], source rows
    y_weight: np.ndarray  # float64 [V, S, Ky]

    def __len__(self) -> int:
        return len(self.x_index)


def view_taps(crop_i: np.ndarray, crop_j: np.ndarray, crop_h: np.ndarray, crop_w: np.ndarray,
              flip: np.ndarray, size: int) -> Taps:
    """The taps of views with these crops (source pixels) and flips, for ``size x size`` outputs."""
    xi, xw = resize_taps(crop_j, crop_w, size)
    yi, yw = resize_taps(crop_i, crop_h, size)
    flip = np.asarray(flip, np.bool_)
    if flip.any():  # output column x of a flipped view is column size-1-x of the unflipped one
        xi[flip] = xi[flip, ::-1]
        xw[flip] = xw[flip, ::-1]
    return Taps(xi, xw, yi, yw)


def cutmix_mask(boxes: np.ndarray, size: int, device: torch.device) -> torch.Tensor | None:
    """float32 ``[B, 1, S, S]``: 1 inside each box ``[y1, y2) x [x1, x2)``, else 0 (None: no box at all).

    ``boxes`` int ``[B, 4]`` holds y1, x1, y2, x2 in output pixels.
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    if not np.any((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])):
        return None
    r = np.arange(size).reshape(1, -1)
    inside_y = ((r >= boxes[:, 0:1]) & (r < boxes[:, 2:3])).astype(np.float32)  # [B, S], small: on the host
    inside_x = ((r >= boxes[:, 1:2]) & (r < boxes[:, 3:4])).astype(np.float32)
    y = torch.from_numpy(inside_y).to(device).view(-1, 1, size, 1)
    x = torch.from_numpy(inside_x).to(device).view(-1, 1, 1, size)
    return y * x  # 0/1 products are exact


class Renderer:
    """Renders views of uint8 x-major images on one device, normalized with ``mean``/``std``.

    ``mean``/``std`` None gives views in [0, 1]. Not thread-safe (it keeps small caches).
    """

    def __init__(self, size: int, channels: int, device: str | torch.device = "cpu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.size, self.channels = int(size), int(channels)
        self.device = torch.device(device)
        if (mean is None) != (std is None):
            raise NrrError(None, "give both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != channels or len(std) != channels:
                raise NrrError(None, f"normalization has {len(mean)} mean / {len(std)} std values for "
                                     f"{channels} channel(s)")
            scale = np.array([1.0 / (255.0 * float(s)) for s in std])
            bias = np.array([-float(m) / float(s) for m, s in zip(mean, std, strict=True)], np.float32)
            self.bias: torch.Tensor | None = torch.from_numpy(bias).to(self.device).view(1, -1, 1, 1)
        else:
            scale = np.full(channels, 1.0 / 255.0)
            self.bias = None
        self.scale = scale  # float64 per channel, folded into pass 1's weights
        self.chunk_bytes = int(chunk_bytes)
        self._buffers: dict[str, torch.Tensor] = {}

    def _workspace(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reused temporary: fresh multi-MB tensors cost page faults on every call (glibc returns
        freed memory above its trim threshold to the kernel), reused ones stay mapped and cached."""
        numel = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(shape)

    # -- the two passes ------------------------------------------------------------------------
    def _chunk(self, width: int, height: int) -> int:
        if self.device.type != "cpu":
            return 1 << 30  # one chunk: GPU memory is not paged in by faults
        per_view = 4 * self.channels * self.size * max(width, height, self.size)
        return max(1, self.chunk_bytes // per_view)

    def render(self, pixels: torch.Tensor, taps: Taps, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``[V, C, S, S]``: view v of image ``pixels[v]`` (uint8 ``[V, C, W, H]``, x-major).

        The per-channel scale of the normalization is applied; its bias is not (see `mix`). The
        result is a permuted view of a ``[V, S, C, S]`` (row-major, channels per row) tensor, the
        layout pass 2 writes; `mix` reads it as it is, which saves a copy. ``out`` (optional, a
        contiguous float32 tensor of at least V*C*S*S elements on the device) holds it.
        """
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != self.channels:
            raise NrrError(None, f"the renderer expects uint8 images [V, {self.channels}, W, H], "
                                 f"got {pixels.dtype} {tuple(pixels.shape)}")
        v_all, c, _w, _h = pixels.shape
        if len(taps) != v_all:
            raise NrrError(None, f"{len(taps)} views for {v_all} images")
        s = self.size
        numel = v_all * c * s * s
        if out is None:
            out = torch.empty(numel, dtype=torch.float32, device=self.device)
        if not out.is_contiguous() or out.numel() < numel or out.dtype != torch.float32:
            raise NrrError(None, f"render's out must be a contiguous float32 tensor of >= {numel} elements")
        rows_out = out.view(-1)[:numel].view(v_all, s, c, s)
        if v_all == 0:
            return rows_out.permute(0, 2, 1, 3)
        with one_cpu_thread(self.device):
            return self._render(pixels.to(self.device, non_blocking=True), taps, rows_out)

    def _render(self, pixels: torch.Tensor, taps: Taps, rows_out: torch.Tensor) -> torch.Tensor:
        v_all, c, w, h = pixels.shape
        s = self.size
        n = min(self._chunk(w, h), v_all)
        # Row indices into each chunk's tables (chunk-local view number v % n), built once per call.
        local = (np.arange(v_all, dtype=np.int64) % n)
        xi, yi = taps.x_index, taps.y_index
        kx, ky = xi.shape[2], yi.shape[2]
        chan = np.arange(c, dtype=np.int64).reshape(1, c, 1, 1)
        rows1 = self._put(((local.reshape(-1, 1, 1, 1) * c + chan) * w + xi[:, None]).reshape(-1, kx))
        w1 = self._put((taps.x_weight[:, None] * self.scale.reshape(1, c, 1, 1)).astype(np.float32).reshape(-1, kx))
        w2 = self._put(taps.y_weight.astype(np.float32).reshape(-1, ky))
        for a in range(0, v_all, n):
            b = min(a + n, v_all)
            m = b - a
            # pass 1: for every (view, channel, output column) the weighted sum of source columns
            table = self._workspace("table", (m * c * w, h))
            table.view(m, c, w, h).copy_(pixels[a:b])
            cols = F.embedding_bag(rows1[a * c * s:b * c * s], table, per_sample_weights=w1[a * c * s:b * c * s],
                                   mode="sum")
            # cols is [m, C, S_x, H]; transposed to [H, m, C*S_x], its rows are (source row, view)
            by_row = self._workspace("by_row", (h, m * c * s))
            by_row.copy_(cols.t())
            del cols
            by_row = by_row.view(h * m, c * s)
            rows2 = self._put((yi[a:b] * m + local[a:b].reshape(-1, 1, 1)).reshape(-1, ky))
            rows_out[a:b].view(m * s, c * s).copy_(
                F.embedding_bag(rows2, by_row, per_sample_weights=w2[a * s:b * s], mode="sum"))
        return rows_out.permute(0, 2, 1, 3)

    def _put(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    # -- mixing and normalization ---------------------------------------------------------------
    def mix(self, views: torch.Tensor, own: np.ndarray, partner: np.ndarray, mode: str, lam: np.ndarray,
            boxes: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Mixed, normalized views: ``out[k]`` from ``views[own[k]]`` and ``views[partner[k]]``.

        ``views`` is `render`'s output; ``lam`` and ``boxes`` (int ``[B, 4]``: y1, x1, y2, x2) are
        those of the own views. CutMix copies the partner's box with ``lerp(own, partner, mask)``,
        which is an exact select for a 0/1 mask; MixUp is ``own * lam + partner * (1 - lam)`` with
        ``1 - lam`` computed in float64 (separate multiply and add: no fused rounding). Then the
        normalization's per-channel bias is added. ``out`` (optional) receives the result.
        """
        with one_cpu_thread(self.device):
            return self._mix(views, np.asarray(own, np.int64), np.asarray(partner, np.int64), mode, lam, boxes, out)

    def _mix(self, views: torch.Tensor, own: np.ndarray, partner: np.ndarray, mode: str, lam: np.ndarray,
             boxes: np.ndarray, out: torch.Tensor | None) -> torch.Tensor:
        bsz = len(own)
        c, s = self.channels, self.size
        if out is None:
            out = torch.empty((bsz, c, s, s), dtype=torch.float32, device=self.device)
        if bsz == 0:
            return out
        mask = cutmix_mask(boxes, s, self.device) if mode == "cutmix" else None
        lam32 = np.asarray(lam, np.float32)
        mixup = mode == "mixup" and bool(np.any(lam32 != 1.0))
        if mode not in ("cutmix", "mixup", "none"):
            raise NrrError(None, f"unknown mix mode {mode!r}")
        if mixup:
            a_all = self._put(lam32).view(-1, 1, 1, 1)
            b_all = self._put((1.0 - lam32.astype(np.float64)).astype(np.float32)).view(-1, 1, 1, 1)
        in_order = bool(np.all(np.diff(own) == 1))  # own views already in batch order: no gather
        own_t = None if in_order else self._put(own)
        part_t = self._put(partner)
        rows = views.permute(0, 2, 1, 3)  # render's own layout: gather whole contiguous views from it
        source = rows if rows.is_contiguous() else views
        step = self._chunk(s, s)
        for a in range(0, bsz, step):
            b = min(a + step, bsz)
            dst = out[a:b]
            mine = views[own[0] + a:own[0] + b] if own_t is None else torch.index_select(views, 0, own_t[a:b])
            if mask is not None or mixup:
                theirs = self._workspace("partner", (b - a, *source.shape[1:]))
                torch.index_select(source, 0, part_t[a:b], out=theirs)
                if source is rows:
                    theirs = theirs.permute(0, 2, 1, 3)
            if mask is not None:
                torch.lerp(mine, theirs, mask[a:b], out=dst)
            elif mixup:
                torch.mul(mine, a_all[a:b], out=dst)
                dst.add_(theirs.mul_(b_all[a:b]))
            else:
                dst.copy_(mine)
            if self.bias is not None:
                dst.add_(self.bias)
        return out


# --------------------------------------------------------------------------------------------
# The one place that picks a renderer by recipe version (a convenience for a handful of images).


def render_batch(
    imgs: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    indices: np.ndarray | Sequence[int],
    plan: EpochPlan | None,
    recipe: AugRecipe,
    epoch: int,
    *,
    explicit: Mapping[str, Any] | tuple[ViewBatch, np.ndarray] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render the mixed views of ``indices``: ``(views [B,C,S,S] f32 in [0, 1], lam [B] f32, partner [B] i64)``.

    ``imgs[i]`` must give the uint8 [C, H, W] image of global index i for every index and its
    partner (a list of all images, or a dict holding one partner group). Seeded mode (the
    default) takes partners from ``plan`` and parameters from ``recipe.seed``; the partner
    contributes its own crop and flip of this epoch. Explicit mode takes both from ``explicit``
    (columns of :data:`EXPLICIT_COLUMNS`, row = image index); ``plan`` may then be None.
    The renderer is the recipe's ``version`` (2: batched, on ``device``; 1: per view, CPU).
    The loader and relabeling call :class:`Renderer` directly; this is the
    convenience form for a handful of images.
    """
    if recipe.version == 1:
        from nrrstore.replay.render_v1 import render_batch_v1

        return render_batch_v1(imgs, indices, plan, recipe, epoch, explicit=explicit)
    epoch = check_epoch(epoch)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    params, partner = batch_views(idx, plan, epoch, explicit)
    need = np.unique(np.concatenate([idx, partner]))
    shapes = {tuple(imgs[int(i)].shape) for i in need}
    if len(shapes) != 1:
        raise NrrError(None, f"render_batch needs images of one size and channel count, got {sorted(shapes)}")
    c = next(iter(shapes))[0]
    if params is None:  # no explicit columns: the plan's seeded views
        assert plan is not None
        h, w = next(iter(shapes))[1:]
        views = view_params_batch(recipe, epoch, need, h, w)
    else:
        views = params.take(need)
    pixels = torch.from_numpy(np.stack([to_xmajor(imgs[int(i)].permute(1, 2, 0).numpy()) for i in need]))
    height, width = next(iter(shapes))[1:]
    check_crops(views, height, width)
    renderer = Renderer(recipe.size, c, device)
    rendered = renderer.render(pixels, view_taps(views.crop_i, views.crop_j, views.crop_h, views.crop_w,
                                                 views.flip, recipe.size))
    own = views.take(np.searchsorted(need, idx))
    out = renderer.mix(rendered, np.searchsorted(need, idx), np.searchsorted(need, partner), recipe.mix, own.lam,
                       own.boxes())
    return out, torch.from_numpy(own.lam.copy()).to(out.device), torch.from_numpy(partner.copy())
