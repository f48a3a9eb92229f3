"""One epoch of SRe2L batch files turned into store rows: distances, view columns, soft labels.

What the store gets, per (epoch, image) row of the distance table:
- the crop in source pixels. SRe2L replays a crop through PIL, whose ``Image.crop`` rounds the box
  ``(j*W, i*H, (j+w)*W, (i+h)*H)`` (fractions times the image size, in float64) half to even; we do
  the same: ``crop_i = rint(fi*H)``, ``crop_h = rint(fi*H + fh*H) - crop_i`` (likewise j, w), so a
  view covers the pixels SRe2L's replay cropped. Crops that leave the image are refused;
- ``flip``; ``partner`` as a store position; ``lam`` as stored (float32); the CutMix box in the
  columns' ``(y1, x1, y2, x2)`` output-pixel convention, i.e. ``box_y = x``, ``box_x = y``;
  zeros for MixUp and unmixed views (which also get ``partner`` = the image itself and lam 1);
- ``d_org``/``d_aug`` from the stored logits (divided by ``temperature``) by
  :func:`nrrstore.train.losses.distances`, with the mixed label ``lam*onehot(y) +
  (1-lam)*onehot(y[partner])``.
The loader re-renders views with its own resize (torch bilinear, antialiased), not PIL's, so the
pixels a student sees are close to, not identical with, the ones the logits were computed on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from nrrstore.convert.sre2l.folder import LabelFolder
from nrrstore.convert.sre2l.unpickle import load_batch
from nrrstore.errors import NrrError
from nrrstore.format.codecs import encode_views, parse_codecs, rank_classes
from nrrstore.format.tables import EXPLICIT_COLUMNS
from nrrstore.replay.views import ViewBatch
from nrrstore.train.losses import distances


def crop_pixels(coords: np.ndarray, height: int, width: int, where: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """(crop_i, crop_j, crop_h, crop_w) int64 from SRe2L fractions, rounded as PIL's crop does."""
    fi, fj, fh, fw = (coords[:, k].astype(np.float64) for k in range(4))
    top, left = np.rint(fi * height), np.rint(fj * width)
    bottom, right = np.rint(fi * height + fh * height), np.rint(fj * width + fw * width)
    bad = (top < 0) | (left < 0) | (bottom > height) | (right > width) | (bottom - top < 1) | (right - left < 1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise NrrError(where, f"view {k}: crop fractions {coords[k].tolist()} give no crop inside the "
                              f"{height}x{width} image")
    return top.astype(np.int64), left.astype(np.int64), (bottom - top).astype(np.int64), (right - left).astype(np.int64)


@dataclass
class EpochRows:
    """One epoch of the label folder as store rows (row = store position): what a worker sends back."""

    epoch: int
    d_org: np.ndarray  # float32 [N]
    d_aug: np.ndarray
    cols: dict[str, np.ndarray]  # EXPLICIT_COLUMNS
    soft: np.ndarray | None  # float16 [N, C] with keep_full
    codecs: dict[str, dict[str, np.ndarray]]  # codec name -> ids / values [N, K] (`encode_views`; issue 15)
    mixes: list[tuple[str, str]]  # (mix mode, file) per batch file
    dtypes: list[str]


@dataclass(frozen=True)
class EpochWork:
    """Everything needed to turn one epoch's batch files into rows, independent of the other epochs."""

    folder: LabelFolder
    labels: np.ndarray  # int64 [N], class of each store position
    height: int
    width: int
    size: int
    num_classes: int
    batch: int
    temperature: float
    keep_full: bool
    codecs: tuple[str, ...] = ()  # array codecs (topk:K, dbrc:K) written from the same logits

    def __call__(self, e: int, order: np.ndarray) -> EpochRows:
        n, bs = len(self.labels), self.batch
        d_org = np.empty(n, np.float32)
        d_aug = np.empty(n, np.float32)
        cols = {c: np.empty(n, dt) for c, dt in EXPLICIT_COLUMNS.items()}
        soft = np.empty((n, self.num_classes), np.float16) if self.keep_full else None
        wanted = parse_codecs(list(self.codecs), self.num_classes) if self.codecs else []
        codecs: dict[str, dict[str, np.ndarray]] = {
            c.name: {"ids": np.empty((n, c.k), np.int64), "values": np.empty((n, c.k), np.float32)} for c in wanted}
        labels = torch.from_numpy(self.labels)
        buf = torch.empty(bs, self.num_classes, dtype=torch.float32)
        mixes, dtypes = [], set()
        for b in range(self.folder.batches):
            path = self.folder.path(e, b)
            pos = order[b * bs:(b + 1) * bs]
            rec = load_batch(path)
            if len(rec) != len(pos):
                raise NrrError(path, f"holds {len(rec)} views, expected {len(pos)} ({n} images in batches of {bs}, "
                                     f"the size of epoch_0/batch_0.tar)")
            if rec.logits.shape[1] != self.num_classes:
                raise NrrError(path, f"logits have {rec.logits.shape[1]} classes, epoch_0/batch_0.tar has "
                                     f"{self.num_classes}")
            mixes.append((rec.mix, os.fspath(path)))
            dtypes.add(str(rec.logits.dtype).replace("torch.", ""))
            cols["crop_i"][pos], cols["crop_j"][pos], cols["crop_h"][pos], cols["crop_w"][pos] = \
                crop_pixels(rec.coords, self.height, self.width, path)
            cols["flip"][pos] = rec.flip
            partner = pos if rec.partner is None else pos[rec.partner]
            lam = 1.0 if rec.lam is None else rec.lam
            cols["partner"][pos] = partner
            cols["lam"][pos] = lam
            box = (0, 0, 0, 0)
            if rec.box is not None:
                box = rec.box  # SRe2L's (x1, y1, x2, y2), x on the height axis, is our (y1, x1, y2, x2)
                if not (0 <= box[0] <= box[2] <= self.size and 0 <= box[1] <= box[3] <= self.size):
                    raise NrrError(path, f"CutMix box {list(box)} does not lie inside the {self.size}x{self.size} views")
            for col, v in zip(("box_y1", "box_x1", "box_y2", "box_x2"), box, strict=True):
                cols[col][pos] = v
            # widened into one reused buffer: a fresh 1 MB tensor per file costs more in page faults
            # than the distances themselves
            logits = buf[:len(pos)].copy_(rec.logits)
            if self.temperature != 1.0:
                logits.div_(self.temperature)
            t_org, t_aug = distances(logits, labels[pos], labels[partner], float(np.float32(lam)))
            org, aug = t_org.numpy(), t_aug.numpy()
            if not (np.isfinite(org).all() and np.isfinite(aug).all()):  # cheaper than scanning B x C logits
                raise NrrError(path, "item 5 (teacher logits) holds non-finite values where the labels need them")
            d_org[pos], d_aug[pos] = org, aug
            if soft is not None or wanted:
                probs = torch.softmax(logits, dim=1)
                if soft is not None:
                    soft[pos] = probs.to(torch.float16).numpy()
                ranked = rank_classes(probs) if wanted else None
                for c in wanted:
                    for f, v in encode_views(c, probs, labels[pos], ranked).items():
                        codecs[c.name][f][pos] = v.numpy()
        ViewBatch.from_columns(cols, os.fspath(self.folder.path(e, 0).parent))  # the loader's own checks
        return EpochRows(e, d_org, d_aug, cols, soft, codecs, mixes, sorted(dtypes))
