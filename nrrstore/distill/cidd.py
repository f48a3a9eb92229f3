"""CIDD: critical-based initial data discovery (NRR-DD), with RDED's selector as an ablation.

Per class c:

1. `ClassCandidates.add`: for each of the class's `mipc` source real images (a seeded sample, or the first
   ones with ``sources="first"``) draw `num_crop`
   RandomResizedCrop boxes and keep ONE crop: the one with the highest CAM ratio (share of the
   image's class activation inside the box; NRR-DD's critical crop, ``per_image="cam"``) or the
   lowest teacher cross-entropy (RDED, ``per_image="score"``). Only that crop's uint8 patch and its
   numbers are kept: memory is ~mipc patches whatever the size of the dataset.
2. `select_and_stitch`: keep the top `cam_top` fraction by CAM ratio (1.0 = no filter), take
   ``ipc * factor**2`` of them by confidence (``"low"`` NRR-DD, ``"high"`` RDED, ``"random"``) and
   stitch factor x factor patches per image, patch k of image i being selected rank ``k*ipc + i``
   (RDED's order), k row-major.

Protocol details, each RDED's unless said otherwise:

* Crops: torchvision's RandomResizedCrop box sampling (10 attempts, then a centre crop), ``scale``
  (RDED's (0.08, 1); the ``nrr`` preset's (0.5, 1)) and square boxes (ratio (1, 1), as RDED's ``MultiRandomCrop``), resized to side
  ``image_size // factor`` with bilinear antialiased interpolation. The boxes come from the one
  sampler the augmentation replay uses too (`nrrstore.sampling.crops`, exact arithmetic), driven by
  the counter-based Philox generator at counter (stream, class, image index, slot): a crop depends
  only on (seed, class, index of the image within its class), so batching, class order and the
  rank a class runs on change nothing. The manifest records the sampler's version
  (``cidd.crop_sampler``); square crops are the same under every version.
* Patches are quantized to uint8 before scoring: scores describe the pixels that will be stored.
* Score: the normalized patch is zero-padded (zero in normalized space, i.e. the mean colour) to
  the teacher's input size, centred as RDED's ``pad`` does; CE and softmax confidence of the true
  class on that canvas.
* CAM ratio (NRR-DD): CAM of the full real image for its class (`nrrstore.models.cam`, one
  forward pass), summed inside the box over its sum over the image (0 for an all-zero CAM). It is
  computed only when the method uses it (``per_image="cam"`` or ``cam_top < 1``); otherwise it is
  recorded as None and costs no forward pass.
* Forward passes: "cam" mode runs one CAM pass over the full images and one scoring pass over the
  single chosen crop per image; "score" mode scores all ``num_crop`` crops per image. Both are
  batched in chunks of `batch_size` inputs.
* Stitching when ``image_size`` is not divisible by ``factor``: like RDED's ``mix_images``, the
  first ``image_size % factor`` tile rows/columns are one pixel larger and their patches are
  resized (bilinear, antialiased) to fit; tiles of the exact patch side are copied bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nrrstore.distill.cidd_config import MAX_WORD, CiddConfig
from nrrstore.distill.nrr import eval_mode, from_uint8, model_device, to_uint8
from nrrstore.errors import NrrError
from nrrstore.models.cam import CamModel
from nrrstore.models.checkpoint import Teacher
from nrrstore.sampling import rng
from nrrstore.sampling.crops import SLOTS_PER_CROP, random_resized_crop

STREAM_CROP = 0x43494444  # "CIDD": counter word 0 of crop-box draws
STREAM_SELECT = STREAM_CROP + 1  # counter word 0 of select="random"
# crop k of an image draws at slots 40k .. 40k+39 (nrrstore.sampling.crops)


# --------------------------------------------------------------------------------------------
# Building blocks (pure functions).


def sample_boxes(
    seed: int,
    labels: np.ndarray | Sequence[int],
    indices: np.ndarray | Sequence[int],
    height: int,
    width: int,
    num_crop: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """int64 [B, num_crop, 4] RandomResizedCrop boxes (top, left, h, w) for images (label, index).

    torchvision's ``RandomResizedCrop.get_params``, all attempts evaluated at once: the first of 10
    attempts whose box fits wins, else a centre crop clipped to the ratio range.
    """
    lab = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    if lab.shape != idx.shape:
        raise ValueError("one label per index")
    if idx.size and (idx.min() < 0 or idx.max() > MAX_WORD or lab.min() < 0 or lab.max() > MAX_WORD):
        raise NrrError(None, "CIDD: class and image indices must lie in [0, 2**32)")
    first_slot = np.arange(num_crop, dtype=np.int64).reshape(1, -1) * SLOTS_PER_CROP
    box = random_resized_crop(seed, STREAM_CROP, lab, idx, first_slot, height, width, scale, ratio)
    return np.stack(box, -1).reshape(idx.shape[0], num_crop, 4)


def crop_resize(images: Tensor, boxes: np.ndarray, side: int, owner: np.ndarray | None = None) -> Tensor:
    """uint8 [N, C, side, side]: box n of `boxes` [N,4] cut from ``images[owner[n]]`` and resized.

    `images` is uint8 [B, C, H, W] (owner defaults to ``arange(N)``). Bilinear, antialiased,
    align_corners=False, in float32 on the images' device, then rounded to uint8; a box already of
    the patch size is copied exactly. Boxes of equal size are resized in one call.
    """
    n = len(boxes)
    owner = np.arange(n) if owner is None else np.asarray(owner)
    out = torch.empty((n, images.shape[1], side, side), dtype=torch.uint8, device=images.device)
    box_list = np.asarray(boxes, dtype=np.int64).tolist()
    owners = owner.tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for row, (_, _, h, w) in enumerate(box_list):
        groups.setdefault((h, w), []).append(row)
    for (h, w), rows in groups.items():
        crops = torch.stack([images[owners[r], :, box_list[r][0]:box_list[r][0] + h, box_list[r][1]:box_list[r][1] + w]
                             for r in rows])
        if (h, w) != (side, side):
            resized = F.interpolate(from_uint8(crops), size=(side, side), mode="bilinear",
                                    align_corners=False, antialias=True)
            crops = to_uint8(resized)
        out[torch.as_tensor(rows, device=images.device)] = crops
    return out


def crop_patch(image: Tensor, box: Sequence[int], side: int) -> Tensor:
    """uint8 [C, side, side]: one recorded box (top, left, h, w) of one uint8 image [C, H, W]."""
    return crop_resize(image.unsqueeze(0), np.asarray([list(box)], dtype=np.int64), side)[0]


def box_ratios(cam: Tensor, boxes: np.ndarray) -> np.ndarray:
    """float64 [B, K]: share of ``cam[b]`` [B,H,W] (non-negative) inside each box ``boxes[b, k]``."""
    c = cam.detach().to("cpu", torch.float64).numpy()
    b, h, w = c.shape
    integral = np.zeros((b, h + 1, w + 1))
    integral[:, 1:, 1:] = c.cumsum(1).cumsum(2)
    t, lft, bh, bw = (boxes[..., i] for i in range(4))
    rows = np.arange(b)[:, None]
    inside = (integral[rows, t + bh, lft + bw] - integral[rows, t, lft + bw]
              - integral[rows, t + bh, lft] + integral[rows, t, lft])
    total = integral[:, h, w][:, None]
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, np.clip(inside / safe, 0.0, 1.0), 0.0)


def cam_scores(cam: Tensor, boxes: np.ndarray, kind: str = "share") -> np.ndarray:
    """float64 [B, K]: each box's CAM criterion (see `CiddConfig.cam_score`)."""
    share = box_ratios(cam, boxes)
    if kind == "share":
        return share
    h, w = cam.shape[-2:]
    area = (boxes[..., 2] * boxes[..., 3]).astype(np.float64) / float(h * w)
    if kind == "density":
        return share / area
    return share - area


def _canvas_offset(size: int, side: int) -> int:
    return (size - side) // 2  # RDED's pad(): (target - side) // 2 before, the rest after


@torch.no_grad()
def score_patches(teacher: Teacher, patches: Tensor, labels: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """(CE, confidence), float32 [N] on CPU, of uint8 patches [N,C,s,s] on zero canvases (see module doc)."""
    ce, conf, _ = score_patches_full(teacher, patches, labels, batch_size)
    return ce, conf


@torch.no_grad()
def score_patches_full(teacher: Teacher, patches: Tensor, labels: Tensor,
                       batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(CE, confidence, correct): `score_patches` plus whether the teacher's top class is the label."""
    model = teacher.model
    dev = model_device(model)
    n, c, s, _ = patches.shape
    size = teacher.image_size
    off = _canvas_offset(size, s)
    ce_parts: list[Tensor] = []
    ok_parts: list[Tensor] = []
    for start in range(0, n, batch_size):
        p = from_uint8(patches[start:start + batch_size].to(dev))
        canvas = torch.zeros((p.shape[0], c, size, size), dtype=torch.float32, device=dev)
        canvas[:, :, off:off + s, off:off + s] = teacher.normalize(p)
        logp = F.log_softmax(model(canvas).float(), dim=1)
        y = labels[start:start + batch_size].to(dev, torch.long)
        ce_parts.append(-logp.gather(1, y[:, None])[:, 0])
        ok_parts.append(logp.argmax(1) == y)
    ce = torch.cat(ce_parts).cpu() if ce_parts else torch.zeros(0)
    ok = torch.cat(ok_parts).cpu() if ok_parts else torch.zeros(0, dtype=torch.bool)
    return ce, torch.exp(-ce), ok


@torch.no_grad()
def full_image_cams(teacher: Teacher, cam_model: CamModel, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """float32 [B, H, W] CAMs (min-max to [0,1]) of uint8 images [B,C,H,W] for their labels.

    Images not of the teacher's size are resized for the forward pass and the CAM resized back,
    so the CAM lives on the source pixels the crop boxes refer to.
    """
    dev = model_device(teacher.model)
    size = teacher.image_size
    h, w = images.shape[-2:]
    parts: list[Tensor] = []
    for start in range(0, images.shape[0], batch_size):
        x = from_uint8(images[start:start + batch_size].to(dev))
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        cam = cam_model.cam(teacher.normalize(x), labels[start:start + batch_size].to(dev, torch.long))
        if (h, w) != (size, size):
            cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False,
                                antialias=True)[:, 0].clamp_min(0.0)
        parts.append(cam.float())
    return torch.cat(parts) if parts else torch.zeros((0, h, w))


# --------------------------------------------------------------------------------------------
# Per-image discovery.


@dataclass(frozen=True)
class Candidate:
    """The one crop kept for a real image, with everything needed to reproduce and judge it."""

    key: str
    label: int
    index: int  # position of the source image among its class's images (the random-number counter)
    crop: int  # which of the num_crop draws was kept
    box: tuple[int, int, int, int]  # top, left, height, width in source pixels
    source_size: tuple[int, int]  # source image height, width
    cam_ratio: float | None  # the cam_score criterion; None when the method does not compute CAMs
    ce: float
    confidence: float
    correct: bool = True  # the teacher's top class on the scoring canvas is the label

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "index": self.index, "crop": self.crop,
                "box": list(self.box), "source_size": list(self.source_size), "cam_ratio": self.cam_ratio,
                "ce": self.ce, "confidence": self.confidence, "correct": self.correct}


def discover(
    teacher: Teacher,
    keys: Sequence[str],
    images: Tensor,
    labels: Sequence[int] | np.ndarray | Tensor,
    indices: Sequence[int] | np.ndarray,
    cfg: CiddConfig,
    cam_model: CamModel | None = None,
) -> tuple[Tensor, list[Candidate]]:
    """One kept crop per real image: (uint8 patches [B,C,s,s] on CPU, candidates).

    `images` uint8 [B,C,H,W]; `labels` and `indices` (each image's position within its class)
    fix the random crops. Classes may be mixed. One call runs ceil(B / batch_size) CAM forwards
    and ceil(B / batch_size) ("cam") or ceil(B * num_crop / batch_size) ("score") scoring forwards.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise NrrError(None, "CIDD: images must be a uint8 tensor [B, C, H, W]")
    b, c, h, w = images.shape
    if c != teacher.in_channels:
        raise NrrError(None, f"CIDD: images have {c} channels, the teacher takes {teacher.in_channels}")
    lab = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(keys) != b or lab.shape != (b,) or idx.shape != (b,):
        raise NrrError(None, f"CIDD: {b} images need {b} keys, labels and indices "
                             f"(got {len(keys)}, {lab.size}, {idx.size})")
    if b and (lab.min() < 0 or lab.max() >= teacher.num_classes):
        raise NrrError(None, f"CIDD: labels must lie in [0, {teacher.num_classes})")
    side = _patch_side(teacher, cfg)
    k = cfg.num_crop
    if b == 0:
        return torch.empty((0, c, side, side), dtype=torch.uint8), []
    model = teacher.model
    dev = model_device(model)
    boxes = sample_boxes(cfg.seed, lab, idx, h, w, k, cfg.scale, cfg.ratio)  # [B, K, 4]
    x = images.to(dev)
    y = torch.as_tensor(lab)
    rows = np.arange(b)
    ratios: np.ndarray | None = None
    with eval_mode(model):
        if cfg.uses_cam:
            cams = full_image_cams(teacher, cam_model or CamModel(model), x, y, cfg.batch_size)
            ratios = cam_scores(cams, boxes, cfg.cam_score)  # [B, K]
        if cfg.per_image == "cam":
            assert ratios is not None
            pick = ratios.argmax(1)  # first maximum: ties keep draw order
            patches = crop_resize(x, boxes[rows, pick], side)
            ce, conf, ok = score_patches_full(teacher, patches, y, cfg.batch_size)
        else:
            flat = boxes.reshape(b * k, 4)
            all_patches = crop_resize(x, flat, side, owner=np.repeat(rows, k))
            ce_all, conf_all, ok_all = score_patches_full(teacher, all_patches, y.repeat_interleave(k), cfg.batch_size)
            pick = ce_all.view(b, k).numpy().argmin(1)  # first minimum
            chosen = torch.as_tensor(rows * k + pick)
            patches, ce, conf, ok = all_patches[chosen.to(dev)], ce_all[chosen], conf_all[chosen], ok_all[chosen]
    if not (torch.isfinite(ce).all() and (ratios is None or np.isfinite(ratios).all())):
        raise NrrError(teacher.spec, "the teacher's outputs are not finite (NaN or infinite weights or outputs?); "
                                     "nothing was selected")
    ce_l, conf_l, ok_l = ce.tolist(), conf.tolist(), ok.tolist()
    found = [
        Candidate(
            key=str(keys[i]), label=int(lab[i]), index=int(idx[i]), crop=int(pick[i]),
            box=_box(boxes[i, pick[i]]),
            source_size=(int(h), int(w)),
            cam_ratio=None if ratios is None else float(ratios[i, pick[i]]),
            ce=float(ce_l[i]), confidence=float(conf_l[i]), correct=bool(ok_l[i]),
        )
        for i in range(b)
    ]
    return patches.cpu(), found


def _box(row: np.ndarray) -> tuple[int, int, int, int]:
    top, left, height, width = (int(v) for v in row)
    return top, left, height, width


def _patch_side(teacher: Teacher, cfg: CiddConfig) -> int:
    side = teacher.image_size // cfg.factor
    if side < 1:
        raise NrrError(None, f"CIDD: factor {cfg.factor} exceeds the image size {teacher.image_size}")
    return side


# --------------------------------------------------------------------------------------------
# Per-class accumulation, selection, stitching.


class ClassCandidates:
    """The kept candidates of ONE class, from at most `cfg.mipc` real images (memory ~ mipc patches).

    Feed batches of the class's real images with `add` (images beyond mipc are ignored and cost
    nothing) or already-discovered candidates with `extend`; then call `select_and_stitch`.
    """

    def __init__(self, label: int, cfg: CiddConfig, teacher: Teacher, cam_model: CamModel | None = None) -> None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < teacher.num_classes:
            raise NrrError(None, f"CIDD: class {label!r} is not in [0, {teacher.num_classes})")
        self.label = int(label)
        self.cfg = cfg
        self.teacher = teacher
        self.side = _patch_side(teacher, cfg)
        if cam_model is None and cfg.uses_cam:
            cam_model = CamModel(teacher.model)  # built once per class, not per batch
        self.cam_model = cam_model
        self.candidates: list[Candidate] = []
        self._patches: Tensor | None = None  # uint8 [mipc, C, side, side], allocated on first use

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def full(self) -> bool:
        return len(self.candidates) >= self.cfg.mipc

    @property
    def patches(self) -> Tensor:
        """uint8 [len(self), C, side, side] (a view; candidate j's patch is row j)."""
        if self._patches is None:
            return torch.empty((0, self.teacher.in_channels, self.side, self.side), dtype=torch.uint8)
        return self._patches[: len(self.candidates)]

    def add(self, keys: Sequence[str], images: Tensor) -> int:
        """Discover candidates in real images (uint8 [B,C,H,W]) of this class; returns how many were taken."""
        take = min(len(keys), self.cfg.mipc - len(self.candidates))
        if take <= 0:
            return 0
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] != len(keys):
            raise NrrError(None, f"CIDD: need one uint8 image [C,H,W] per key ({len(keys)})")
        bs = self.cfg.batch_size
        for start in range(0, take, bs):
            stop = min(start + bs, take)
            first = len(self.candidates)
            patches, found = discover(
                self.teacher, keys[start:stop], images[start:stop], [self.label] * (stop - start),
                np.arange(first, first + stop - start), self.cfg, self.cam_model)
            self.extend(patches, found)
        return take

    def extend(self, patches: Tensor, found: Sequence[Candidate]) -> None:
        """Append candidates that `discover` produced for this class, in image order."""
        if len(found) != patches.shape[0]:
            raise ValueError("one patch per candidate")
        if len(self.candidates) + len(found) > self.cfg.mipc:
            raise NrrError(None, f"class {self.label}: more than mipc = {self.cfg.mipc} candidates")
        for j, cand in enumerate(found):
            if cand.label != self.label or cand.index != len(self.candidates) + j:
                raise NrrError(None, f"class {self.label}: candidate {cand.key!r} (class {cand.label}, "
                                     f"index {cand.index}) is out of order")
        if self._patches is None:
            self._patches = torch.empty((self.cfg.mipc, *patches.shape[1:]), dtype=torch.uint8)
        n = len(self.candidates)
        self._patches[n:n + len(found)] = patches
        self.candidates.extend(found)


def select_indices(
    ce: Sequence[float] | np.ndarray,
    cam_ratio: Sequence[float | None] | np.ndarray | None,
    cfg: CiddConfig,
    label: int,
    correct: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Positions of the ``cfg.need`` selected candidates, in rank order (rank r = entry r).

    With ``cfg.correct_only`` the candidates the teacher gets right (``correct``) rank before the
    others, each part in the order of ``cfg.select``. Raises NrrError naming the shortfall when the
    class has too few candidates.
    """
    ce_arr = np.asarray(ce, dtype=np.float64)
    n, need = len(ce_arr), cfg.need
    if n < need:
        raise NrrError(None, f"class {label}: {n} candidate images, need {need} ({need - n} missing)")
    pool = np.arange(n)
    if cfg.cam_top < 1.0:
        if cam_ratio is None or any(r is None for r in cam_ratio):
            raise NrrError(None, f"class {label}: cam_top < 1 needs the CAM ratio of every candidate")
        ratios = np.asarray(cam_ratio, dtype=np.float64)
        keep = max(need, math.ceil(cfg.cam_top * n - 1e-9))  # the tolerance absorbs 0.1 * 30 = 3.0000000000000004
        pool = np.sort(np.argsort(-ratios, kind="stable")[:keep])  # back to candidate order for tie-breaks
    sub = ce_arr[pool]
    if cfg.select == "low":
        order = np.argsort(-sub, kind="stable")  # highest CE = lowest confidence first
    elif cfg.select == "high":
        order = np.argsort(sub, kind="stable")
    else:
        order = rng.permutation(cfg.seed, STREAM_SELECT, label, n=len(pool))
    if cfg.correct_only:
        if correct is None:
            raise NrrError(None, f"class {label}: correct_only needs each candidate's correctness")
        ok = np.asarray(correct, dtype=bool)[pool][order]
        order = np.concatenate([order[ok], order[~ok]])  # stable: rank order within each part
    return pool[order[:need]]


def tile_layout(size: int, factor: int) -> list[tuple[int, int, int, int]]:
    """Tiles (top, left, h, w) of a stitched image, row-major; the first size % factor rows/columns
    are one pixel larger (RDED's ``mix_images``)."""
    base, extra = divmod(size, factor)
    edges = [0]
    for r in range(factor):
        edges.append(edges[-1] + base + (1 if r < extra else 0))
    return [(edges[r], edges[q], edges[r + 1] - edges[r], edges[q + 1] - edges[q])
            for r in range(factor) for q in range(factor)]


def select_and_stitch(cands: ClassCandidates) -> tuple[Tensor, list[dict[str, Any]]]:
    """(images float32 [ipc, C, size, size] on CPU, exactly k/255 values; one metadata dict per image).

    Patch k (row-major tile) of image i is the candidate of selected rank ``k * ipc + i``.
    Metadata per image: class, index and, per patch, the source key and index, the crop box
    (top, left, h, w in source pixels), the source size, the tile it fills, its rank, CAM ratio,
    CE and confidence: plain JSON-ready Python values.
    """
    cfg, label, teacher = cands.cfg, cands.label, cands.teacher
    order = select_indices([cd.ce for cd in cands.candidates], [cd.cam_ratio for cd in cands.candidates],
                           cfg, label, [cd.correct for cd in cands.candidates])
    patches = cands.patches
    size, side, ipc = teacher.image_size, cands.side, cfg.ipc
    out = torch.empty((ipc, patches.shape[1], size, size), dtype=torch.uint8)
    tiles = tile_layout(size, cfg.factor)
    metas: list[dict[str, Any]] = [{"class": label, "index": i, "patches": []} for i in range(ipc)]
    for k, (ty, tx, th, tw) in enumerate(tiles):
        chosen = order[k * ipc:(k + 1) * ipc]
        p = patches[torch.as_tensor(chosen)]
        if (th, tw) != (side, side):
            p = to_uint8(F.interpolate(from_uint8(p), size=(th, tw), mode="bilinear", align_corners=False,
                                       antialias=True))
        out[:, :, ty:ty + th, tx:tx + tw] = p
        for i, j in enumerate(chosen.tolist()):
            cand = cands.candidates[j]
            metas[i]["patches"].append({
                "key": cand.key, "source_index": cand.index, "crop": cand.crop, "box": list(cand.box),
                "source_size": list(cand.source_size), "tile": [ty, tx, th, tw], "rank": k * ipc + i,
                "cam_ratio": cand.cam_ratio, "ce": cand.ce, "confidence": cand.confidence, "correct": cand.correct,
            })
    return from_uint8(out), metas
