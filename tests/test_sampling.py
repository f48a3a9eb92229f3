"""The one RandomResizedCrop sampler (nrrstore.sampling.crops), shared by CIDD and the replay.

CIDD used to draw its boxes with libm's log/exp (crop sampler version 1). Square crops, CIDD's default
and the only ones its command line offers, must be the very same boxes under the shared sampler;
manifests now record the version, and configurations recorded before (without it) still parse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nrrstore.distill.cidd import STREAM_CROP, sample_boxes
from nrrstore.distill.cidd_config import CiddConfig
from nrrstore.errors import NrrError
from nrrstore.replay.recipe import STREAM_VIEW, AugRecipe, view_params_batch
from nrrstore.sampling import rng
from nrrstore.sampling.crops import SAMPLER_VERSION, SLOTS_PER_CROP, random_resized_crop
from tests._builders import cidd_config

V01_MANIFEST = Path(__file__).parent / "fixtures" / "v0.1-store" / "manifest.json"


def cidd_boxes_v1(seed, labels, indices, height, width, num_crop, scale=(0.08, 1.0), ratio=(1.0, 1.0)):
    """CIDD's sampler as nrrstore 0.1 wrote it (libm log/exp, all attempts at once), kept verbatim."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1, 1, 1)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1, 1)
    b = idx.shape[0]
    crop = np.arange(num_crop, dtype=np.int64).reshape(1, -1, 1)
    base = crop * SLOTS_PER_CROP + 4 * np.arange(10, dtype=np.int64).reshape(1, 1, -1)
    u_scale = rng.uniform_array(seed, STREAM_CROP, lab, idx, base)
    u_ratio = rng.uniform_array(seed, STREAM_CROP, lab, idx, base + 1)
    area = float(height) * float(width)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(lo + (hi - lo) * u_ratio)
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(-1)[..., None]
    fits = ok.any(-1)
    h = np.take_along_axis(h, first, -1)[..., 0]
    w = np.take_along_axis(w, first, -1)[..., 0]
    slot = np.take_along_axis(np.broadcast_to(base, ok.shape), first, -1)[..., 0]
    in_ratio = width / height
    fb_w, fb_h = width, height
    if in_ratio < ratio[0]:
        fb_h = max(int(round(width / ratio[0])), 1)  # noqa: RUF046 - nrrstore 0.1's code, kept verbatim
    elif in_ratio > ratio[1]:
        fb_w = max(int(round(height * ratio[1])), 1)  # noqa: RUF046 - as above
    h = np.where(fits, h, fb_h)
    w = np.where(fits, w, fb_w)
    lab2, idx2 = lab[..., 0], idx[..., 0]
    top = rng.randint_array(seed, height - h + 1, STREAM_CROP, lab2, idx2, slot + 2)
    left = rng.randint_array(seed, width - w + 1, STREAM_CROP, lab2, idx2, slot + 3)
    top = np.where(fits, top, (height - h) // 2)
    left = np.where(fits, left, (width - w) // 2)
    return np.stack([top, left, h, w], -1).reshape(b, num_crop, 4).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
@pytest.mark.parametrize("size", [(28, 28), (224, 224), (64, 48), (5, 28)])
def test_cidd_square_crops_are_the_bytes_version_1_drew(seed: int, size: tuple[int, int]) -> None:
    labels, indices = np.arange(500) % 7, np.arange(500)
    for scale in ((0.08, 1.0), (0.9, 1.0), (1.0, 1.0)):
        old = cidd_boxes_v1(seed, labels, indices, *size, 5, scale)
        assert np.array_equal(sample_boxes(seed, labels, indices, *size, 5, scale), old)


def test_cidd_other_ratios_differ_at_most_where_libm_rounds_differently() -> None:
    labels, indices = np.arange(4000) % 7, np.arange(4000)
    old = cidd_boxes_v1(3, labels, indices, 64, 48, 5, ratio=(3 / 4, 4 / 3))
    new = sample_boxes(3, labels, indices, 64, 48, 5, ratio=(3 / 4, 4 / 3))
    assert (old != new).any(-1).mean() < 1e-3  # 0 on this machine; libm's last bit varies between systems


def test_cidd_and_the_replay_draw_with_the_same_sampler() -> None:
    recipe = AugRecipe(size=16, seed=11, ratio=(0.5, 2.0), scale=(0.2, 0.9))
    views = view_params_batch(recipe, 4, np.arange(300), 40, 30)
    top, left, h, w = random_resized_crop(11, STREAM_VIEW, 4, np.arange(300), 0, 40, 30, recipe.scale, recipe.ratio)
    assert np.array_equal(np.stack([views.crop_i, views.crop_j, views.crop_h, views.crop_w]), np.stack([top, left, h, w]))
    boxes = sample_boxes(11, [2] * 300, np.arange(300), 40, 30, 3, scale=(0.2, 0.9), ratio=(0.5, 2.0))
    crop2 = random_resized_crop(11, STREAM_CROP, 2, np.arange(300), 2 * SLOTS_PER_CROP, 40, 30, (0.2, 0.9), (0.5, 2.0))
    assert np.array_equal(boxes[:, 2], np.stack(crop2, -1))


def test_manifests_record_the_crop_sampler_and_older_configs_still_parse() -> None:
    cfg = cidd_config(ipc=2)
    assert cfg.to_dict()["crop_sampler"] == SAMPLER_VERSION == 2
    assert CiddConfig.from_dict(cfg.to_dict()) == cfg
    recorded = json.loads(V01_MANIFEST.read_text(encoding="utf-8"))["method"]["cidd"]
    assert "crop_sampler" not in recorded  # written by v0.1
    old = CiddConfig.from_dict(recorded)
    assert old.crop_sampler == 1 and old.ratio == (1.0, 1.0)  # square: drawn alike by both versions
    with pytest.raises(NrrError, match="crop sampler version 1 cannot be drawn"):
        CiddConfig.from_dict({**recorded, "ratio": [0.75, 1.25]})
