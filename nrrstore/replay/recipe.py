"""Exact augmentation replay: RandomResizedCrop + horizontal flip + CutMix/MixUp.

A store keeps only two numbers per (image, epoch) view, so the student's loader must rebuild
the very view the teacher saw. In *seeded* mode every parameter is a pure function of
``(recipe.seed, epoch, image index)`` through the counter-based generator of
:mod:`nrrstore.sampling.rng`; in *explicit* mode the parameters come from stored columns
(:data:`~nrrstore.format.tables.EXPLICIT_COLUMNS`, what converted SRe2L files carry). Both go through the same
renderer (:mod:`nrrstore.replay.render`), used by the relabeling job (teacher side) and by the
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
whole batches with :mod:`nrrstore.replay.render`, bit-identical for one view whatever batch,
chunk, thread or worker count, on one kind of device; version 1 (stores written before it)
replays with the per-view ``F.interpolate`` renderer of :mod:`nrrstore.replay.render_v1`. Neither
promises the last bit across torch versions, CPU instruction sets or GPUs; the teacher and the
student should render on the same kind of device when the last bit matters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nrrstore.errors import NrrError
from nrrstore.replay.views import ViewBatch, ViewParams
from nrrstore.sampling import rng
from nrrstore.sampling.crops import random_resized_crop
from nrrstore.sampling.exactmath import det_exp, det_log

if TYPE_CHECKING:
    from nrrstore.format.manifest import Manifest

RECIPE_VERSION = 2
"""The renderer new recipes get: 2 = batched (:mod:`nrrstore.replay.render`)."""
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


def check_epoch(epoch: int) -> int:
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
    epoch = check_epoch(epoch)
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
    epoch = check_epoch(epoch)
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



def batch_views(idx: np.ndarray, plan: EpochPlan | None, epoch: int,
                explicit: Mapping[str, Any] | tuple[ViewBatch, np.ndarray] | None) -> tuple[ViewBatch | None, np.ndarray]:
    """Checked ``(explicit parameters or None, partner of each index)`` of a batch to render (both renderers):
    seeded views need ``epoch``'s plan, explicit ones their columns; every index must be one of theirs."""
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

def store_recipe(manifest: Manifest, where: str | os.PathLike[str] | None = None) -> AugRecipe:
    """The store's augmentation recipe; a store without one replays ``AugRecipe(size=height, seed=0)``."""
    if manifest.augmentation:
        return AugRecipe.from_dict(manifest.augmentation, None if where is None else os.fspath(where))
    return AugRecipe(size=manifest.image.height, seed=0)
