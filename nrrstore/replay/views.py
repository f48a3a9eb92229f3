"""The parameters of augmented views: one view (`ViewParams`) or the columns of many (`ViewBatch`).

Seeded stores compute them from the recipe (:mod:`nrrstore.replay.recipe`); explicit stores (converted SRe2L
labels) read them from stored columns (:data:`~nrrstore.format.tables.EXPLICIT_COLUMNS`), which can say
anything, hence the checks here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nrrstore.errors import NrrError
from nrrstore.format.tables import EXPLICIT_COLUMNS


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


def check_crops(views: ViewBatch, height: int, width: int, where: str | None = None) -> None:
    """Refuse crops that leave the ``height x width`` images (explicit columns can say anything)."""
    bad = ((views.crop_i < 0) | (views.crop_j < 0) | (views.crop_h < 1) | (views.crop_w < 1)
           | (views.crop_i + views.crop_h > height) | (views.crop_j + views.crop_w > width))
    if bad.any():
        p = views[int(np.flatnonzero(bad)[0])]
        raise NrrError(where, f"crop (top {p.crop_i}, left {p.crop_j}, {p.crop_h}x{p.crop_w}) lies outside the "
                              f"{height}x{width} image")
