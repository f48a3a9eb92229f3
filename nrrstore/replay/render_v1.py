"""Rendering version 1: one view at a time with ``F.interpolate`` (kept so that version-1 stores replay exactly).

Stores written before recipe version 2 were labelled from views rendered this way; the batched renderer
(:mod:`nrrstore.replay.render`) differs in the last bits, so those stores keep this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nrrstore.errors import NrrError
from nrrstore.replay.recipe import MIX_MODES, AugRecipe, EpochPlan, batch_views, check_epoch, view_params_batch
from nrrstore.replay.views import ViewBatch, ViewParams


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
    epoch = check_epoch(epoch)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    size = recipe.size
    explicit_params, partner = batch_views(idx, plan, epoch, explicit)
    if explicit_params is None:  # seeded: the plan's views of the batch and its partners
        need = np.unique(np.concatenate([idx, partner]))
        shapes = np.array([tuple(imgs[int(i)].shape[-2:]) for i in need], dtype=np.int64)
        batch = view_params_batch(recipe, epoch, need, shapes[:, 0], shapes[:, 1])
        row_of = {int(i): r for r, i in enumerate(need)}

        def params(i: int) -> ViewParams:
            return batch[row_of[i]]
    else:
        def params(i: int) -> ViewParams:
            return explicit_params[i]

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

