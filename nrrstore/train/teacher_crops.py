"""The ImageNet recipe's random-resized crops for teacher training, drawn from counters.

Why counters and the replay's renderer: the boxes come from the one RandomResizedCrop sampler
(`nrrstore.sampling.crops`) at (seed, epoch, position in the epoch), so a run is the same on every
platform and batch size, and a resumed run sees the crops an unbroken one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch

from nrrstore.errors import NrrError
from nrrstore.replay.render import Renderer, to_xmajor, view_taps
from nrrstore.sampling.crops import random_resized_crop
from nrrstore.sources.batches import ImageBatch

STREAM_TEACHER_CROP = 0x54454143  # "TEAC": counter word 0 of the teacher's random-resized crops
RRC_RATIO = (3 / 4, 4 / 3)


def check_crop_scale(scale: tuple[float, float] | None) -> None:
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise NrrError("--crop-scale", f"needs 0 < low <= high <= 1, got {scale[0]},{scale[1]}")


def resized_crops(images: Sequence[np.ndarray], first: int, *, scale: tuple[float, float], seed: int, epoch: int,
                  side: int | None = None) -> torch.Tensor:
    """[N,C,S,S] in [0,1]: a RandomResizedCrop (area ``scale``, aspect 3/4-4/3) of each uint8 image, resized to
    ``side`` (default: the image's) with the replay's antialiased bilinear renderer."""
    h, w = images[0].shape[:2]
    c = 1 if images[0].ndim == 2 else images[0].shape[2]
    n = len(images)
    top, left, hh, ww = random_resized_crop(seed, STREAM_TEACHER_CROP, epoch, np.arange(first, first + n), 0, h, w,
                                            scale, RRC_RATIO)
    pixels = torch.from_numpy(np.stack([to_xmajor(im) for im in images]))
    side = side or h
    return Renderer(side, c).render(pixels, view_taps(top, left, hh, ww, np.zeros(n, np.bool_), side)).contiguous()


def crops_for_epoch(scale: tuple[float, float], seed: int, epoch: int, side: int | None = None) -> ImageBatch:
    """`resized_crops` of one epoch, as `shard_batches`' ``to_float``."""
    check_crop_scale(scale)
    return partial(resized_crops, scale=scale, seed=seed, epoch=epoch, side=side)
