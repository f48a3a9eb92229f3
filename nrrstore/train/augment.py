"""Exact augmentation replay: RandomResizedCrop + horizontal flip + CutMix/MixUp.

A store keeps only two numbers per (image, epoch) view, so the student's loader must rebuild
the very view the teacher saw. In *seeded* mode every parameter is a pure function of
``(recipe.seed, epoch, image index)`` through the counter-based generator of
:mod:`nrrstore.sampling.rng`; in *explicit* mode the parameters come from stored columns
(:data:`~nrrstore.format.tables.EXPLICIT_COLUMNS`, what converted SRe2L files carry). Both go through the same
:func:`render_view` / :func:`mix_views`, used by the relabeling job (teacher side) and by the
loader (student side), which is what makes replay bit-exact.

Why the arithmetic looks unusual: parameters must be identical on every platform, numpy and
Python version. Only integer arithmetic and IEEE-754 basic operations (+ - * /, sqrt, which are
correctly rounded everywhere) and exact operations (frexp, ldexp, floor, rint) are used. The
logarithm and exponential needed by RandomResizedCrop's log-uniform aspect ratio and by Beta
sampling are our own polynomial evaluations (:mod:`nrrstore.sampling.exactmath`) instead of the
platform libm, whose last bit may differ between systems; the crop itself is drawn by the one
RandomResizedCrop sampler (:mod:`nrrstore.sampling.crops`), which CIDD uses too. Random draws live
at fixed counter slots, so a draw never depends on how many draws another decision used.

Residual risk, stated plainly: parameters (crop, flip, partner, lambda, box) are exact
everywhere. Pixels depend on the recipe's ``version`` (the renderer): version 2 (current) renders
whole batches with :mod:`nrrstore.train.render`, bit-identical for one view whatever batch,
chunk, thread or worker count, on one kind of device; version 1 (stores written before it)
replays with the per-view ``F.interpolate`` renderer kept here (:func:`render_batch_v1`). Neither
promises the last bit across torch versions, CPU instruction sets or GPUs; the teacher and the
student should render on the same kind of device when the last bit matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nrrstore.errors import NrrError
from nrrstore.format.tables import EXPLICIT_COLUMNS
from nrrstore.sampling import rng
from nrrstore.sampling.crops import random_resized_crop
from nrrstore.sampling.exactmath import det_exp, det_log

RECIPE_VERSION = 2
"""The renderer new recipes get: 2 = batched (:mod:`nrrstore.train.render`)."""
REPLAYED_VERSIONS = (1, 2)
"""Versions this nrrstore replays bit for bit: 1 = per-view ``F.interpolate`` (before 0.2)."""
MIX_MODES = ("cutmix", "mixup", "none")

# Counter layout: (STREAM, epoch, image index, slot) under key = recipe.seed.
STREAM_VIEW = 1
STREAM_GROUPS = 2
STREAM_MEMBERS = 3

SLOT_RRC = 0  # the crop's slots 0..39 (see nrrstore.sampling.crops)
SLOT_FLIP = 40
SLOT_MIX_GATE = 41
SLOT_BOX_Y = 42
SLOT_BOX_X = 43
SLOT_BETA = 64  # Beta attempt t uses slots 64+2t and 65+2t
BETA_ATTEMPTS = 32
MAX_SIDE = 32767  # boxes are stored as int16



# Constants of Cheng's Beta sampler (log 4, 1 + log 5).
_LOG4 = 1.3862943611198906
_ONE_PLUS_LOG5 = 2.6094379124341003


# --------------------------------------------------------------------------------------------
# The recipe.


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NrrError(None, f"augmentation recipe: {name} must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise NrrError(None, f"augmentation recipe: {name} must be an integer in [{lo}, {hi}], "
                             f"got {value!r}")
    return int(value)


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise NrrError(None, f"augmentation recipe: {name} must be a pair of numbers, got {value!r}")
    a, b = (_num(v, name) for v in value)
    if not 0 < a <= b:
        raise NrrError(None, f"augmentation recipe: {name} must satisfy 0 < low <= high, "
                             f"got {value!r}")
    return a, b


@dataclass(frozen=True)
class AugRecipe:
    """Everything that defines the augmented views; recorded in the store manifest.

    ``scale``/``ratio``: torchvision RandomResizedCrop ranges (area fraction, w/h). ``mix``:
    "cutmix", "mixup" or "none"; lambda ~ Beta(mix_alpha, mix_alpha) (alpha 1 is uniform);
    each view is mixed with probability ``mix_p`` (per view, not per batch as in timm).
    ``group_size``: images [g*G, (g+1)*G) form a partner group (see :func:`epoch_plan`).
    ``version``: the renderer (see :data:`REPLAYED_VERSIONS`); parameters do not depend on it.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    mix_p: float = 1.0
    group_size: int = 64
    seed: int = 0
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.version not in REPLAYED_VERSIONS:
            raise NrrError(None, version_problem(self.version))
        object.__setattr__(self, "size", _int(self.size, "size", 1, MAX_SIDE))
        scale = _pair(self.scale, "scale")
        if scale[1] > 1.0:
            raise NrrError(None, f"augmentation recipe: scale must lie in (0, 1], got {self.scale!r}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", _pair(self.ratio, "ratio"))
        for name in ("flip_p", "mix_p"):
            v = _num(getattr(self, name), name)
            if not 0.0 <= v <= 1.0:
                raise NrrError(None, f"augmentation recipe: {name} must be in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        if self.mix not in MIX_MODES:
            raise NrrError(None, f"augmentation recipe: mix must be one of {MIX_MODES}, "
                                 f"got {self.mix!r}")
        alpha = _num(self.mix_alpha, "mix_alpha")
        if alpha <= 0:
            raise NrrError(None, f"augmentation recipe: mix_alpha must be > 0, got {alpha}")
        object.__setattr__(self, "mix_alpha", alpha)
        object.__setattr__(self, "group_size", _int(self.group_size, "group_size", 1, 2**31 - 1))
        object.__setattr__(self, "seed", _int(self.seed, "seed", 0, 2**64 - 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; floats are written with repr so they round-trip exactly."""
        return {
            "version": self.version,
            "generator": rng.GENERATOR,
            "size": self.size,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip_p": self.flip_p,
            "mix": self.mix,
            "mix_alpha": self.mix_alpha,
            "mix_p": self.mix_p,
            "group_size": self.group_size,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> AugRecipe:
        """Inverse of :meth:`to_dict`; refuses other versions, generators and unknown keys."""
        if not isinstance(d, Mapping):
            raise NrrError(path, "augmentation recipe must be a JSON object")
        data = dict(d)
        version = data.get("version")
        if isinstance(version, bool) or version not in REPLAYED_VERSIONS:
            raise NrrError(path, version_problem(version))
        generator = data.pop("generator", None)
        if generator != rng.GENERATOR:
            raise NrrError(path, f"augmentation recipe uses generator {generator!r}; this "
                                 f"nrrstore replays only {rng.GENERATOR!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise NrrError(path, f"augmentation recipe has unknown keys {unknown}")
        if "size" not in data:
            raise NrrError(path, "augmentation recipe lacks 'size'")
        for key in ("scale", "ratio"):
            if key in data and isinstance(data[key], list):
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except NrrError as err:
            raise NrrError(path, err.problem) from None


def version_problem(version: Any) -> str:
    """The one-line refusal of a recipe version this nrrstore cannot replay (names both sides)."""
    have = " and ".join(str(v) for v in REPLAYED_VERSIONS)
    return (f"augmentation recipe version {version!r} cannot be replayed by this nrrstore (it replays "
            f"versions {have}; it writes version {RECIPE_VERSION}); use the nrrstore release that wrote the store")


# --------------------------------------------------------------------------------------------
# Epoch plan: visiting order and partners.


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """Visiting order and CutMix/MixUp partners of one epoch (all int64 arrays).

    ``groups``: group ids in visiting order; ``order``: image indices in visiting order;
    ``partner[i]``: the image mixed into image i.
    """

    epoch: int
    group_size: int
    groups: np.ndarray
    order: np.ndarray
    partner: np.ndarray

    def group_bounds(self, group: int) -> tuple[int, int]:
        """[start, stop) image indices of a group."""
        n = len(self.partner)
        start = int(group) * self.group_size
        return start, min(start + self.group_size, n)


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch < 2**32:
        raise NrrError(None, f"epoch must be an integer in [0, 2**32), got {epoch!r}")
    return int(epoch)


def epoch_plan(recipe: AugRecipe, epoch: int, num_images: int) -> EpochPlan:
    """The seeded visiting order and partners of ``epoch`` over ``num_images`` images.

    Partner policy, chosen so that a streaming reader never needs random access to the whole
    store: images are cut into fixed groups of ``G = recipe.group_size`` consecutive indices
    ``[g*G, (g+1)*G)`` (the last may be smaller). Each epoch visits the groups in a seeded
    permutation (keys from stream STREAM_GROUPS), and inside each group visits its images in a
    seeded permutation pi (keys from stream STREAM_MEMBERS, one per image index). The partner
    of ``pi[k]`` is ``pi[(k+1) % len(group)]``: a derangement inside every group of two or more
    images, and a group of one image partners itself. A reader that loads one group at a time
    therefore has every partner at hand.
    """
    epoch = _check_epoch(epoch)
    n = int(num_images)
    if not 0 <= n < 2**32:
        raise NrrError(None, f"number of images must be in [0, 2**32), got {num_images!r}")
    g = recipe.group_size
    if n == 0:
        empty = np.zeros(0, np.int64)
        return EpochPlan(epoch=epoch, group_size=g, groups=empty, order=empty, partner=empty)
    num_groups = -(-n // g)
    groups = rng.permutation(recipe.seed, STREAM_GROUPS, epoch, n=num_groups)
    index = np.arange(n, dtype=np.int64)
    keys = rng.bits64_array(recipe.seed, STREAM_MEMBERS, epoch, 0, index)
    # Sorted by group, then by key: group g's permutation pi sits at positions [g*G, g*G+len).
    by_group = np.lexsort((keys, index // g)).astype(np.int64)
    start = (index // g) * g
    length = np.minimum(start + g, n) - start
    nxt = start + (index - start + 1) % np.maximum(length, 1)
    partner = np.empty(n, dtype=np.int64)
    partner[by_group] = by_group[nxt]
    # Concatenate the groups' permutations in the seeded group order.
    glen = np.minimum((groups + 1) * g, n) - groups * g
    first = np.concatenate([[0], np.cumsum(glen)[:-1]]).astype(np.int64)
    pos = np.repeat(groups * g - first, glen) + np.arange(n, dtype=np.int64)
    order = by_group[pos]
    return EpochPlan(epoch=epoch, group_size=g, groups=groups, order=order, partner=partner)


# --------------------------------------------------------------------------------------------
# Per-view parameters.


@dataclass(frozen=True)
class ViewParams:
    """One view: crop (top ``crop_i``, left ``crop_j``, ``crop_h`` x ``crop_w`` source pixels),
    ``flip``, ``lam`` (weight of the image itself; a float32 value) and the CutMix box
    ``[box_y1, box_y2) x [box_x1, box_x2)`` in output pixels (empty unless CutMix)."""

    crop_i: int
    crop_j: int
    crop_h: int
    crop_w: int
    flip: bool
    lam: float
    box_y1: int
    box_x1: int
    box_y2: int
    box_x2: int


_INT_FIELDS = ("crop_i", "crop_j", "crop_h", "crop_w", "box_y1", "box_x1", "box_y2", "box_x2")


@dataclass(frozen=True, eq=False)
class ViewBatch:
    """Columns of many views (int64 ints, bool flip, float32 lam); row k is ``self[k]``."""

    crop_i: np.ndarray
    crop_j: np.ndarray
    crop_h: np.ndarray
    crop_w: np.ndarray
    flip: np.ndarray
    lam: np.ndarray
    box_y1: np.ndarray
    box_x1: np.ndarray
    box_y2: np.ndarray
    box_x2: np.ndarray

    def __len__(self) -> int:
        return len(self.lam)

    def __getitem__(self, k: int) -> ViewParams:
        kw: dict[str, Any] = {f: int(getattr(self, f)[k]) for f in _INT_FIELDS}
        return ViewParams(flip=bool(self.flip[k]), lam=float(self.lam[k]), **kw)

    def boxes(self) -> np.ndarray:
        """int64 [B, 4]: the CutMix boxes as (y1, x1, y2, x2) rows."""
        return np.stack([self.box_y1, self.box_x1, self.box_y2, self.box_x2], axis=1)

    def take(self, rows: np.ndarray | Sequence[int]) -> ViewBatch:
        rows = np.asarray(rows, dtype=np.int64)
        return ViewBatch(**{f: getattr(self, f)[rows] for f in (*_INT_FIELDS, "flip", "lam")})

    def to_columns(self, partner: np.ndarray) -> dict[str, np.ndarray]:
        """Explicit-mode columns with the dtypes of :data:`EXPLICIT_COLUMNS`."""
        partner = np.asarray(partner)
        if partner.shape != (len(self),):
            raise NrrError(None, f"partner column has shape {partner.shape}, expected ({len(self)},)")
        cols = {f: getattr(self, f) for f in (*_INT_FIELDS, "flip", "lam")}
        cols["partner"] = partner
        out = {}
        for name, dtype in EXPLICIT_COLUMNS.items():
            a = np.asarray(cols[name])
            if dtype.kind == "i" and a.size:
                info = np.iinfo(dtype)
                if int(a.min()) < info.min or int(a.max()) > info.max:
                    raise NrrError(None, f"column {name} does not fit {dtype}")
            out[name] = a.astype(dtype)
        return out

    @classmethod
    def from_columns(
        cls, cols: Mapping[str, Any], path: str | None = None
    ) -> tuple[ViewBatch, np.ndarray]:
        """Validated ``(ViewBatch, partner int64)`` from explicit-mode columns."""
        missing = [c for c in EXPLICIT_COLUMNS if c not in cols]
        if missing:
            raise NrrError(path, f"explicit view columns lack {missing}")
        arrays = {c: np.asarray(cols[c]) for c in EXPLICIT_COLUMNS}
        n = len(arrays["lam"])
        for name, a in arrays.items():
            if a.shape != (n,):
                raise NrrError(path, f"explicit view column {name} has shape {a.shape}, "
                                     f"expected ({n},)")
            want = EXPLICIT_COLUMNS[name].kind
            if want == "i" and a.dtype.kind not in "iu":
                raise NrrError(path, f"explicit view column {name} must be integer, got {a.dtype}")
            if want == "b" and a.dtype.kind != "b":
                raise NrrError(path, f"explicit view column {name} must be boolean, got {a.dtype}")
            if want == "f" and a.dtype.kind != "f":
                raise NrrError(path, f"explicit view column {name} must be float, got {a.dtype}")
        ints = {f: arrays[f].astype(np.int64) for f in _INT_FIELDS}
        lam = arrays["lam"].astype(np.float32)
        partner = arrays["partner"].astype(np.int64)
        if n:
            if not np.all(np.isfinite(lam)) or lam.min() < 0 or lam.max() > 1:
                raise NrrError(path, "explicit view column lam must lie in [0, 1]")
            if ints["crop_i"].min() < 0 or ints["crop_j"].min() < 0:
                raise NrrError(path, "explicit crop offsets must be >= 0")
            if ints["crop_h"].min() < 1 or ints["crop_w"].min() < 1:
                raise NrrError(path, "explicit crop sizes must be >= 1")
            if (ints["box_y1"].min() < 0 or ints["box_x1"].min() < 0
                    or np.any(ints["box_y2"] < ints["box_y1"])
                    or np.any(ints["box_x2"] < ints["box_x1"])):
                raise NrrError(path, "explicit cutmix boxes must satisfy 0 <= y1 <= y2, 0 <= x1 <= x2")
            if partner.min() < 0 or partner.max() >= n:
                raise NrrError(path, f"explicit partner indices must lie in [0, {n})")
        batch = cls(flip=arrays["flip"].astype(np.bool_), lam=lam, **ints)
        return batch, partner


def _beta(recipe: AugRecipe, epoch: int, idx: np.ndarray) -> np.ndarray:
    """Symmetric Beta(alpha, alpha) draws; alpha 1 is one uniform, exactly.

    alpha < 1: Johnk's algorithm in log space; alpha > 1: Cheng's BB (1978). Both reject;
    attempt t uses fixed slots, and after BETA_ATTEMPTS rejections (probability < 2**-32)
    the draw is 0.5.
    """
    seed, a = recipe.seed, recipe.mix_alpha
    if a == 1.0:
        return rng.uniform_array(seed, STREAM_VIEW, epoch, idx, SLOT_BETA)
    out = np.full(len(idx), 0.5)
    pending = np.ones(len(idx), np.bool_)
    two_a = 2.0 * a  # Cheng's constants (alpha, beta, gamma of algorithm BB with a = b)
    beta = math.sqrt((two_a - 2.0) / (2.0 * a * a - two_a)) if a > 1.0 else 1.0
    gamma = a + 1.0 / beta
    for t in range(BETA_ATTEMPTS):
        rows = np.flatnonzero(pending)
        if rows.size == 0:
            break
        ii = idx[rows]
        u1 = rng.uniform_open_array(seed, STREAM_VIEW, epoch, ii, SLOT_BETA + 2 * t)
        u2 = rng.uniform_open_array(seed, STREAM_VIEW, epoch, ii, SLOT_BETA + 2 * t + 1)
        if a < 1.0:
            lx = det_log(u1) / a
            ly = det_log(u2) / a
            hi, lo = np.maximum(lx, ly), np.minimum(lx, ly)
            lsum = hi + det_log(1.0 + det_exp(lo - hi))  # log(X + Y)
            accept = lsum <= 0.0
            lam = det_exp(lx - lsum)
        else:
            v = beta * det_log(u1 / (1.0 - u1))
            w = a * det_exp(v)
            z = u1 * u1 * u2
            r = gamma * v - _LOG4
            s = a + r - w
            logz = det_log(z)
            accept = ((s + _ONE_PLUS_LOG5 >= 5.0 * z) | (s > logz)
                      | (r + two_a * det_log(two_a / (a + w)) >= logz))
            lam = w / (a + w)
        out[rows[accept]] = lam[accept]
        pending[rows[accept]] = False
    return out


def _as_column(value: int | np.ndarray | Sequence[int], n: int, name: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)).copy()
    if a.size and a.min() < 1:
        raise NrrError(None, f"image {name} must be >= 1")
    return a


def view_params_batch(
    recipe: AugRecipe,
    epoch: int,
    indices: np.ndarray | Sequence[int],
    height: int | np.ndarray | Sequence[int],
    width: int | np.ndarray | Sequence[int],
) -> ViewBatch:
    """Seeded parameters of the views of ``indices`` in ``epoch`` (height/width per image or one).

    Crop: torchvision RandomResizedCrop semantics (area fraction ~ U(scale), log aspect ratio
    ~ U(log ratio), sides rounded half-to-even, 10 attempts, then the center-crop fallback).
    Flip with probability flip_p. Mixing (probability mix_p, else lam = 1 and no box):
    lambda ~ Beta(alpha, alpha); for CutMix the box follows torchvision v2 CutMix on the
    ``size x size`` output: centre uniform over pixels, half side ``int(0.5*sqrt(1-lam)*size)``,
    clipped to the image, and lam is then recomputed as 1 - box area / size**2, as torchvision
    and timm do, so that it is the true share of the image's own pixels. lam is rounded to
    float32 (the stored precision) so seeded and explicit modes carry the same value.
    """
    epoch = _check_epoch(epoch)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= 2**32):
        raise NrrError(None, "image indices must lie in [0, 2**32)")
    n = len(idx)
    hh = _as_column(height, n, "height")
    ww = _as_column(width, n, "width")
    seed, size = recipe.seed, recipe.size
    top, left, ch, cw = random_resized_crop(seed, STREAM_VIEW, epoch, idx, SLOT_RRC, hh, ww, recipe.scale, recipe.ratio)
    flip = rng.uniform_array(seed, STREAM_VIEW, epoch, idx, SLOT_FLIP) < recipe.flip_p
    lam = np.ones(n, np.float64)
    box = [np.zeros(n, np.int64) for _ in range(4)]  # y1, x1, y2, x2
    if recipe.mix != "none":
        mixed = rng.uniform_array(seed, STREAM_VIEW, epoch, idx, SLOT_MIX_GATE) < recipe.mix_p
        rows = np.flatnonzero(mixed)
        raw = _beta(recipe, epoch, idx[rows])
        if recipe.mix == "mixup":
            lam[rows] = raw
        else:
            ry = rng.randint_array(seed, size, STREAM_VIEW, epoch, idx[rows], SLOT_BOX_Y)
            rx = rng.randint_array(seed, size, STREAM_VIEW, epoch, idx[rows], SLOT_BOX_X)
            half = np.floor(0.5 * np.sqrt(1.0 - raw) * size).astype(np.int64)
            y1, x1 = np.maximum(ry - half, 0), np.maximum(rx - half, 0)
            y2, x2 = np.minimum(ry + half, size), np.minimum(rx + half, size)
            for col, val in zip(box, (y1, x1, y2, x2), strict=True):
                col[rows] = val
            lam[rows] = 1.0 - ((y2 - y1) * (x2 - x1)).astype(np.float64) / float(size * size)
    return ViewBatch(
        crop_i=top, crop_j=left, crop_h=ch, crop_w=cw, flip=flip, lam=lam.astype(np.float32),
        box_y1=box[0], box_x1=box[1], box_y2=box[2], box_x2=box[3],
    )


def view_params(recipe: AugRecipe, epoch: int, index: int, height: int, width: int) -> ViewParams:
    """Seeded parameters of one view; equal to row 0 of :func:`view_params_batch`."""
    return view_params_batch(recipe, epoch, [index], height, width)[0]


def epoch_columns(
    recipe: AugRecipe, epoch: int, num_images: int,
    height: int | np.ndarray, width: int | np.ndarray,
) -> dict[str, np.ndarray]:
    """Explicit-mode columns of a whole epoch, row i = image i (for writing explicit stores)."""
    plan = epoch_plan(recipe, epoch, num_images)
    batch = view_params_batch(recipe, epoch, np.arange(num_images), height, width)
    return batch.to_columns(plan.partner)


# --------------------------------------------------------------------------------------------
# Rendering. Version 1: one view at a time (kept so that version-1 stores replay exactly).


def render_view(img: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """float32 [C, size, size]: crop, scale to [0, 1] (x / 255), resize, then flip.

    Resize is ``F.interpolate(bilinear, antialias=True, align_corners=False)``; it is skipped
    when the crop already has the output size, so a full-image crop is exact.
    """
    if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.dim() != 3:
        raise NrrError(None, "render_view expects a uint8 tensor [C, H, W]")
    _, h_img, w_img = img.shape
    i, j, h, w = p.crop_i, p.crop_j, p.crop_h, p.crop_w
    if i < 0 or j < 0 or h < 1 or w < 1 or i + h > h_img or j + w > w_img:
        raise NrrError(None, f"crop (top {i}, left {j}, {h}x{w}) lies outside the "
                             f"{h_img}x{w_img} image")
    x = img[:, i:i + h, j:j + w].to(torch.float32).div_(255.0)
    if (h, w) != (size, size):
        x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True).squeeze(0)
    if p.flip:
        x = x.flip(-1)
    return x.contiguous()


def mix_views(view: torch.Tensor, partner_view: torch.Tensor, p: ViewParams, mode: str) -> torch.Tensor:
    """Mix the partner's view into ``view``: paste p's box (cutmix) or lam*a + (1-lam)*b (mixup)."""
    if view.shape != partner_view.shape:
        raise NrrError(None, f"view shapes differ: {tuple(view.shape)} vs {tuple(partner_view.shape)}")
    if mode == "cutmix":
        if p.box_y2 <= p.box_y1 or p.box_x2 <= p.box_x1:
            return view
        out = view.clone()
        out[:, p.box_y1:p.box_y2, p.box_x1:p.box_x2] = partner_view[:, p.box_y1:p.box_y2,
                                                                    p.box_x1:p.box_x2]
        return out
    if mode == "mixup":
        if p.lam == 1.0:
            return view
        return view * p.lam + partner_view * (1.0 - p.lam)
    if mode == "none":
        return view
    raise NrrError(None, f"unknown mix mode {mode!r}; expected one of {MIX_MODES}")


def render_batch_v1(
    imgs: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    indices: np.ndarray | Sequence[int],
    plan: EpochPlan | None,
    recipe: AugRecipe,
    epoch: int,
    *,
    explicit: Mapping[str, Any] | tuple[ViewBatch, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Version 1 of :func:`render_batch`: a Python loop over views (``F.interpolate`` per crop).

    ``imgs[i]`` must give the uint8 [C, H, W] image of global index i for every index and its
    partner (a list of all images, or a dict holding one partner group). Seeded mode (the
    default) takes partners from ``plan`` and parameters from ``recipe.seed``; the partner
    contributes its own crop and flip of this epoch. Explicit mode takes both from ``explicit``
    (columns of :data:`EXPLICIT_COLUMNS`, row = image index); ``plan`` may then be None.
    """
    epoch = _check_epoch(epoch)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise NrrError(None, "render_batch needs at least one index")
    size = recipe.size
    if explicit is None:
        if plan is None or plan.epoch != epoch:
            raise NrrError(None, f"render_batch needs the epoch plan of epoch {epoch}")
        if idx.min() < 0 or idx.max() >= len(plan.partner):
            raise NrrError(None, f"image indices must lie in [0, {len(plan.partner)})")
        partner = plan.partner[idx]
        need = np.unique(np.concatenate([idx, partner]))
        shapes = np.array([tuple(imgs[int(i)].shape[-2:]) for i in need], dtype=np.int64)
        batch = view_params_batch(recipe, epoch, need, shapes[:, 0], shapes[:, 1])
        row_of = {int(i): r for r, i in enumerate(need)}

        def params(i: int) -> ViewParams:
            return batch[row_of[i]]
    else:
        all_params, all_partner = (explicit if isinstance(explicit, tuple)
                                   else ViewBatch.from_columns(explicit))
        if idx.min() < 0 or idx.max() >= len(all_params):
            raise NrrError(None, f"image indices must lie in [0, {len(all_params)})")
        partner = all_partner[idx]

        def params(i: int) -> ViewParams:
            return all_params[i]

    cache: dict[int, torch.Tensor] = {}

    def view_of(i: int) -> torch.Tensor:
        if i not in cache:
            cache[i] = render_view(imgs[i], params(i), size)
        return cache[i]

    views, lams = [], []
    for i, q in zip(idx.tolist(), partner.tolist(), strict=True):
        p = params(i)
        views.append(mix_views(view_of(i), view_of(q), p, recipe.mix))
        lams.append(p.lam)
    return (torch.stack(views), torch.tensor(lams, dtype=torch.float32),
            torch.from_numpy(partner.astype(np.int64)))


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
    The loader and relabeling call :mod:`nrrstore.train.render` directly; this is the
    convenience form for a handful of images.
    """
    if recipe.version == 1:
        return render_batch_v1(imgs, indices, plan, recipe, epoch, explicit=explicit)
    from nrrstore.train.render import Renderer, to_xmajor, view_taps

    epoch = _check_epoch(epoch)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    params, partner = _batch_views(imgs, idx, plan, epoch, explicit)
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


def _batch_views(imgs: Any, idx: np.ndarray, plan: EpochPlan | None, epoch: int,
                 explicit: Mapping[str, Any] | tuple[ViewBatch, np.ndarray] | None) -> tuple[ViewBatch | None, np.ndarray]:
    """Checked ``(explicit parameters or None, partner of each index)`` of a batch."""
    if idx.size == 0:
        raise NrrError(None, "render_batch needs at least one index")
    if explicit is None:
        if plan is None or plan.epoch != epoch:
            raise NrrError(None, f"render_batch needs the epoch plan of epoch {epoch}")
        if idx.min() < 0 or idx.max() >= len(plan.partner):
            raise NrrError(None, f"image indices must lie in [0, {len(plan.partner)})")
        return None, plan.partner[idx]
    all_params, all_partner = explicit if isinstance(explicit, tuple) else ViewBatch.from_columns(explicit)
    if idx.min() < 0 or idx.max() >= len(all_params):
        raise NrrError(None, f"image indices must lie in [0, {len(all_params)})")
    return all_params, all_partner[idx]


def check_crops(views: ViewBatch, height: int, width: int, where: str | None = None) -> None:
    """Refuse crops that leave the ``height x width`` images (explicit columns can say anything)."""
    bad = ((views.crop_i < 0) | (views.crop_j < 0) | (views.crop_h < 1) | (views.crop_w < 1)
           | (views.crop_i + views.crop_h > height) | (views.crop_j + views.crop_w > width))
    if bad.any():
        p = views[int(np.flatnonzero(bad)[0])]
        raise NrrError(where, f"crop (top {p.crop_i}, left {p.crop_j}, {p.crop_h}x{p.crop_w}) lies outside the "
                              f"{height}x{width} image")
