"""The batched renderer (augmentation recipe version 2) on real photos and Fashion-MNIST.

What must hold: its resize is torch's antialiased bilinear one (up to float rounding), and every
view's pixels depend on that view alone, never on the batch, the chunking or the thread count,
which is what makes the teacher's and the student's views bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrrstore.errors import NrrError
from nrrstore.replay import recipe as A
from nrrstore.replay import render as R
from nrrstore.replay import render_v1 as V1
from nrrstore.replay import views as VW
from nrrstore.replay.render import Renderer, from_xmajor, resize_taps, to_xmajor, view_taps
from tests._real import fmnist, photo_crops

pytestmark = pytest.mark.usefixtures("single_thread")


def _photos(n: int, size: int) -> list[np.ndarray]:
    return [img for img, _ in photo_crops(n, size=size)]


def _render(images: list[np.ndarray], views: VW.ViewBatch, size: int, **kw) -> torch.Tensor:
    pixels = torch.from_numpy(np.stack([to_xmajor(a) for a in images]))
    r = Renderer(size, pixels.shape[1], **kw)
    return r.render(pixels, view_taps(views.crop_i, views.crop_j, views.crop_h, views.crop_w, views.flip, size))


@pytest.mark.parametrize("source,size", [(48, 48), (64, 40), (28, 28)])
def test_matches_torch_antialiased_bilinear(source: int, size: int) -> None:
    """Up- and downsampling crops, flips, RGB and grey: within float rounding of F.interpolate."""
    images = [img for _, img, _ in fmnist("train", per_class=2)] if source == 28 else _photos(12, source)
    recipe = A.AugRecipe(size=size, seed=7, scale=(0.08, 1.0))
    views = A.view_params_batch(recipe, 3, np.arange(len(images)), source, source)
    assert views.flip.any() and (~views.flip).any()
    got = _render(images, views, size)
    for k, img in enumerate(images):
        chw = torch.from_numpy(np.array(img))
        chw = chw.unsqueeze(0) if img.ndim == 2 else chw.permute(2, 0, 1)
        want = V1.render_view(chw.contiguous(), views[k], size)  # version 1: F.interpolate(antialias=True)
        assert (got[k] - want).abs().max().item() < 3e-5


def test_full_crop_is_a_scaled_copy() -> None:
    img = _photos(1, 24)[0]
    views = VW.ViewBatch(crop_i=np.array([0]), crop_j=np.array([0]), crop_h=np.array([24]), crop_w=np.array([24]),
                        flip=np.array([True]), lam=np.ones(1, np.float32),
                        box_y1=np.zeros(1, np.int64), box_x1=np.zeros(1, np.int64), box_y2=np.zeros(1, np.int64),
                        box_x2=np.zeros(1, np.int64))
    got = _render([img], views, 24)[0]
    want = torch.from_numpy(img).permute(2, 0, 1).flip(-1).float() * np.float32(1 / 255)
    assert torch.equal(got, want)


def test_a_view_depends_on_itself_only() -> None:
    """Subsets, other batch companions, chunk sizes and thread counts give the same bits."""
    images = _photos(10, 40)
    recipe = A.AugRecipe(size=32, seed=1)
    views = A.view_params_batch(recipe, 0, np.arange(10), 40, 40)
    full = _render(images, views, 32)
    for chunk in (1, 3 * 4 * 32 * 40 * 3, 1 << 30):  # one view per chunk, three, all
        assert torch.equal(_render(images, views, 32, chunk_bytes=chunk), full)
    sub = [7, 2, 5]
    assert torch.equal(_render([images[i] for i in sub], views.take(sub), 32), full[sub])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(_render(images, views, 32), full)
    finally:
        torch.set_num_threads(before)


def test_taps_sum_to_one_and_stay_inside_the_crop() -> None:
    for length, size in ((5, 32), (32, 32), (100, 32), (33, 7)):
        index, weight = resize_taps(np.array([3]), np.array([length]), size)
        assert np.allclose(weight.sum(-1), 1.0, atol=1e-12)
        assert index.min() >= 3 and index.max() <= 3 + length - 1
        assert (weight >= 0).all()


@pytest.mark.parametrize("mix", A.MIX_MODES)
def test_mixing_and_normalization(mix: str) -> None:
    images = _photos(8, 32)
    recipe = A.AugRecipe(size=24, seed=4, mix=mix, group_size=8)
    views = A.view_params_batch(recipe, 1, np.arange(8), 32, 32)
    plan = A.epoch_plan(recipe, 1, 8)
    pixels = torch.from_numpy(np.stack([to_xmajor(a) for a in images]))
    taps = view_taps(views.crop_i, views.crop_j, views.crop_h, views.crop_w, views.flip, 24)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    plain = Renderer(24, 3)
    norm = Renderer(24, 3, mean=mean, std=std)
    raw = plain.render(pixels, taps)
    out = plain.mix(raw, np.arange(8), plan.partner, mix, views.lam, views.boxes())
    for k in range(8):
        q = int(plan.partner[k])
        if mix == "cutmix":
            y1, x1, y2, x2 = views.boxes()[k]
            inside = torch.zeros(24, 24, dtype=torch.bool)
            inside[y1:y2, x1:x2] = True
            assert torch.equal(out[k][:, inside], raw[q][:, inside])  # pasted exactly
            assert torch.equal(out[k][:, ~inside], raw[k][:, ~inside])
            assert views.lam[k] == np.float32(1 - inside.sum().item() / 24**2)
        elif mix == "mixup":
            assert torch.allclose(out[k], raw[k] * float(views.lam[k]) + raw[q] * (1 - float(views.lam[k])), atol=1e-6)
        else:
            assert torch.equal(out[k], raw[k])
    normed = norm.mix(norm.render(pixels, taps), np.arange(8), plan.partner, mix, views.lam, views.boxes())
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed, (out - m) / s, atol=2e-6)


def test_render_batch_dispatches_on_the_recipe_version() -> None:
    images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in _photos(6, 20)]
    idx = np.arange(6)
    v2 = A.AugRecipe(size=16, group_size=6, seed=2)
    v1 = A.AugRecipe(size=16, group_size=6, seed=2, version=1)
    plan = A.epoch_plan(v2, 0, 6)
    new, lam, partner = R.render_batch(images, idx, plan, v2, 0)
    old, lam1, partner1 = R.render_batch(images, idx, plan, v1, 0)
    assert torch.equal(old, V1.render_batch_v1(images, idx, plan, v1, 0)[0])
    assert torch.equal(lam, lam1) and torch.equal(partner, partner1)
    assert not torch.equal(new, old) and (new - old).abs().max() < 3e-5  # pixels moved: hence version 2


def test_bad_input() -> None:
    r = Renderer(8, 3)
    with pytest.raises(NrrError, match="uint8 images"):
        r.render(torch.zeros(1, 3, 8, 8), view_taps(np.array([0]), np.array([0]), np.array([8]), np.array([8]),
                                                    np.array([False]), 8))
    with pytest.raises(NrrError, match="normalization has"):
        Renderer(8, 3, mean=[0.5], std=[0.5])
    with pytest.raises(NrrError, match="both mean and std"):
        Renderer(8, 1, mean=[0.5])
    x = to_xmajor(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert torch.equal(from_xmajor(torch.from_numpy(x)), torch.arange(12, dtype=torch.uint8).view(1, 3, 4))
