"""CIDD's configuration: `CiddConfig` and the choices it accepts (kept apart from the torch code of
:mod:`nrrstore.distill.cidd`, which imports it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrrstore.distill.presets import LEGACY_CIDD, NRR_CIDD
from nrrstore.errors import NrrError
from nrrstore.sampling.crops import SAMPLER_VERSION, SLOTS_PER_CROP

PER_IMAGE = ("cam", "score")
SELECT = ("low", "high", "random")
SOURCES = ("random", "first")
CAM_SCORES = ("share", "density", "excess")

MAX_WORD = 2**32 - 1  # the largest counter word of the Philox generator (crop and select draws)



def _int_at_least(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise NrrError(None, f"CIDD: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _range_pair(value: Any, name: str, hi: float) -> tuple[float, float]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    if not ok or not 0 < value[0] <= value[1] <= hi:
        raise NrrError(None, f"CIDD: {name} must be a pair 0 < low <= high <= {hi}, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class CiddConfig:
    """CIDD parameters. ``factor`` and ``mipc`` have no default (the presets resolve them by image size and
    IPC); the others default to the ``nrr`` preset's values (:mod:`nrrstore.distill.presets`).

    per_image: "cam" keeps each image's crop with the highest CAM ratio (NRR-DD), "score" the one
        with the lowest CE (RDED).
    select: "low" takes the least confident candidates first (NRR-DD), "high" the most confident
        (RDED), "random" a seeded random subset. Ranking uses the CE (monotone in the confidence,
        but without float32 saturation near confidence 1); ties keep candidate order.
    cam_top: fraction t in (0, 1] of the class's candidates kept by CAM ratio before selecting by
        confidence. NRR-DD does not publish t; 0.5 (the more critical half) is our choice. The
        filter never keeps fewer than the ``ipc * factor**2`` candidates that selection needs.
    sources: which ``mipc`` real images of a class are considered: "random" (a seeded sample, as
        RDED's shuffled ImageFolder; the pipeline picks it in a cheap first pass over the labels) or
        "first" (the first mipc in shard order).
    correct_only: select only among candidates the teacher classifies as their own class (on the
        scoring canvas); when fewer are correct than selection needs, the rest follow in rank order.
    cam_score: how a crop's CAM mass is judged. "share" is the share of the image's CAM inside the
        box (it can only grow with the box, so it favours large crops); "density" divides it by the
        box's share of the image's area (mean activation in the box relative to the image's), and
        "excess" subtracts that area share (CAM mass beyond what a uniform map would put there).
    seed: integer in [0, 2**64); with the class index it determines every random draw.
    batch_size: inputs per teacher forward pass.
    crop_sampler: the version of the crop sampler (`nrrstore.sampling.crops`): the current one, or
        1 (CIDD before 0.2, libm log/exp) for square crops only, which both versions draw alike.
    """

    ipc: int
    factor: int
    mipc: int
    num_crop: int = NRR_CIDD["num_crop"]
    per_image: str = NRR_CIDD["per_image"]
    select: str = NRR_CIDD["select"]
    cam_top: float = NRR_CIDD["cam_top"]
    scale: tuple[float, float] = NRR_CIDD["scale"]
    ratio: tuple[float, float] = NRR_CIDD["ratio"]
    seed: int = 0
    batch_size: int = 64
    sources: str = NRR_CIDD["sources"]
    correct_only: bool = NRR_CIDD["correct_only"]
    cam_score: str = NRR_CIDD["cam_score"]
    crop_sampler: int = SAMPLER_VERSION

    def __post_init__(self) -> None:
        for name in ("ipc", "factor", "mipc", "num_crop", "batch_size"):
            object.__setattr__(self, name, _int_at_least(getattr(self, name), name, 1))
        if self.num_crop > MAX_WORD // SLOTS_PER_CROP:
            raise NrrError(None, f"CIDD: num_crop must be at most {MAX_WORD // SLOTS_PER_CROP}")
        if self.per_image not in PER_IMAGE:
            raise NrrError(None, f"CIDD: per_image must be one of {', '.join(PER_IMAGE)}, got {self.per_image!r}")
        if self.select not in SELECT:
            raise NrrError(None, f"CIDD: select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if self.sources not in SOURCES:
            raise NrrError(None, f"CIDD: sources must be one of {', '.join(SOURCES)}, got {self.sources!r}")
        if self.cam_score not in CAM_SCORES:
            raise NrrError(None, f"CIDD: cam_score must be one of {', '.join(CAM_SCORES)}, got {self.cam_score!r}")
        if not isinstance(self.correct_only, bool):
            raise NrrError(None, f"CIDD: correct_only must be true or false, got {self.correct_only!r}")
        t = self.cam_top
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise NrrError(None, f"CIDD: cam_top must lie in (0, 1], got {t!r}")
        object.__setattr__(self, "cam_top", float(t))
        object.__setattr__(self, "scale", _range_pair(self.scale, "scale", 1.0))
        object.__setattr__(self, "ratio", _range_pair(self.ratio, "ratio", math.inf))
        if self.crop_sampler != SAMPLER_VERSION and not (self.crop_sampler == 1 and self.ratio == (1.0, 1.0)):
            raise NrrError(None, f"CIDD: crop sampler version {self.crop_sampler!r} cannot be drawn by this nrrstore "
                                 f"(it draws version {SAMPLER_VERSION}, and version 1 for square crops only)")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise NrrError(None, f"CIDD: seed must be an integer in [0, 2**64), got {seed!r}")
        object.__setattr__(self, "seed", int(seed))
        if self.mipc < self.need:
            raise NrrError(None, f"CIDD: mipc {self.mipc} is below ipc * factor^2 = {self.need}: "
                                 "every class would be short of candidates")

    @property
    def need(self) -> int:
        """Candidates selected per class: ``ipc * factor**2``."""
        return self.ipc * self.factor**2

    @property
    def uses_cam(self) -> bool:
        """Whether the method needs CAM ratios (and so one CAM forward pass per real image)."""
        return self.per_image == "cam" or self.cam_top < 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"ipc": self.ipc, "factor": self.factor, "mipc": self.mipc, "num_crop": self.num_crop,
                "per_image": self.per_image, "select": self.select, "cam_top": self.cam_top,
                "scale": list(self.scale), "ratio": list(self.ratio), "seed": self.seed,
                "batch_size": self.batch_size, "sources": self.sources, "correct_only": self.correct_only,
                "cam_score": self.cam_score, "crop_sampler": self.crop_sampler}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CiddConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise NrrError(None, f"CIDD: unknown parameters {', '.join(unknown)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        for key, meant in LEGACY_CIDD.items():  # keys added since v0.1: their absence meant v0.1's behaviour
            kw.setdefault(key, meant)
        return cls(**kw)
