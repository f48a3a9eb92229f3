"""Augmentation replay: recipe, epoch plan, view parameters, rendering, explicit columns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nrrstore.errors import NrrError
from nrrstore.replay import recipe as A
from nrrstore.replay import render as R
from nrrstore.replay import render_v1 as V1
from nrrstore.replay import views as VW
from nrrstore.sampling import rng

# ------------------------------------------------------------------------------------------
# Recipe


def test_recipe_round_trip_exact():
    for recipe in (
        A.AugRecipe(size=32),
        A.AugRecipe(size=224, scale=(0.25, 0.9), ratio=(0.5, 2.0), flip_p=0.0, mix="mixup",
                    mix_alpha=0.2, mix_p=0.5, group_size=7, seed=2**64 - 1),
        A.AugRecipe(size=28, mix="none", scale=(0.1 + 0.2, 1.0)),
        A.AugRecipe(size=28, version=1),
    ):
        d = recipe.to_dict()
        assert d["version"] == recipe.version and d["generator"] == rng.GENERATOR == "philox4x32-10"
        back = A.AugRecipe.from_dict(json.loads(json.dumps(d)))
        assert back == recipe
        assert back.to_dict() == d


def test_recipe_defaults_and_normalisation():
    r = A.AugRecipe(size=32, scale=[0.08, 1], ratio=[3 / 4, 4 / 3])
    assert r.scale == (0.08, 1.0) and r.ratio == (0.75, 4 / 3)
    assert (r.flip_p, r.mix, r.mix_alpha, r.mix_p, r.group_size, r.seed) == (
        0.5, "cutmix", 1.0, 1.0, 64, 0)


@pytest.mark.parametrize("kwargs", [
    {"size": 0}, {"size": True}, {"size": 32, "scale": (0.5, 0.1)}, {"size": 32, "scale": (0, 1)},
    {"size": 32, "scale": (0.1, 1.5)}, {"size": 32, "ratio": (2.0, 1.0)}, {"size": 32, "flip_p": 1.5},
    {"size": 32, "mix": "cutout"}, {"size": 32, "mix_alpha": 0.0}, {"size": 32, "mix_p": -0.1},
    {"size": 32, "group_size": 0}, {"size": 32, "seed": -1}, {"size": 32, "seed": 2**64},
    {"size": 32, "flip_p": float("nan")}, {"size": 32, "version": 3}, {"size": 32, "version": 0},
])
def test_recipe_rejects_bad_values(kwargs):
    with pytest.raises(NrrError):
        A.AugRecipe(**kwargs)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(version=3),
    lambda d: d.update(version=True),
    lambda d: d.update(generator="mt19937"),
    lambda d: d.update(colour_jitter=0.4),
    lambda d: d.pop("size"),
    lambda d: d.update(mix="cutout"),
])
def test_recipe_from_dict_refuses(mutate):
    d = A.AugRecipe(size=32).to_dict()
    mutate(d)
    with pytest.raises(NrrError, match="manifest.json"):
        A.AugRecipe.from_dict(d, path="manifest.json")


def test_unreplayable_version_names_both_versions():
    d = dict(A.AugRecipe(size=32).to_dict(), version=3)
    with pytest.raises(NrrError) as err:
        A.AugRecipe.from_dict(d, path="store/manifest.json")
    msg = str(err.value)
    assert msg.startswith("store/manifest.json: ") and "\n" not in msg
    assert "version 3" in msg and "versions 1 and 2" in msg and f"writes version {A.RECIPE_VERSION}" in msg


# ------------------------------------------------------------------------------------------
# Deterministic log/exp


def test_det_log_exp_accuracy():
    xs = np.concatenate([np.geomspace(1e-300, 1e300, 2001), np.linspace(0.01, 3.0, 2001)])
    got = A.det_log(xs)
    want = np.array([math.log(x) for x in xs])
    assert np.all(np.abs(got - want) <= 4e-16 * np.maximum(1.0, np.abs(want)))
    ys = np.linspace(-700.0, 700.0, 4001)
    got = A.det_exp(ys)
    want = np.array([math.exp(y) for y in ys])
    assert np.all(np.abs(got - want) <= 4e-16 * want)
    assert A.det_log(1.0) == 0.0 and A.det_exp(0.0) == 1.0
    assert A.det_exp(-5000.0) == 0.0


def test_det_log_exp_golden_bits():
    assert float(A.det_log(0.75)).hex() == "-0x1.269621134db92p-2"
    assert float(A.det_log(3.0)).hex() == "0x1.193ea7aad030bp+0"
    assert float(A.det_exp(0.5)).hex() == "0x1.a61298e1e069cp+0"


# ------------------------------------------------------------------------------------------
# Epoch plan


def _check_plan(plan: A.EpochPlan, n: int, g: int) -> None:
    assert plan.order.dtype == np.int64 and plan.partner.dtype == np.int64
    assert sorted(plan.order.tolist()) == list(range(n))
    num_groups = -(-n // g)
    assert sorted(plan.groups.tolist()) == list(range(num_groups))
    pos = 0
    for grp in plan.groups.tolist():
        start, stop = plan.group_bounds(grp)
        members = plan.order[pos:pos + stop - start]
        pos += stop - start
        # the order visits the group as one contiguous block
        assert sorted(members.tolist()) == list(range(start, stop))
        for k, i in enumerate(members.tolist()):
            # partner is the next image of the group's permutation, cyclically
            assert plan.partner[i] == members[(k + 1) % len(members)]
            assert start <= plan.partner[i] < stop
            if stop - start > 1:
                assert plan.partner[i] != i
            else:
                assert plan.partner[i] == i
    assert pos == n
    assert sorted(plan.partner.tolist()) == list(range(n))  # a permutation (cycles per group)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 200), g=st.integers(1, 70), seed=st.integers(0, 2**64 - 1),
       epoch=st.integers(0, 2**32 - 1))
def test_epoch_plan_properties(n, g, seed, epoch):
    plan = A.epoch_plan(A.AugRecipe(size=8, group_size=g, seed=seed), epoch, n)
    _check_plan(plan, n, g)
    again = A.epoch_plan(A.AugRecipe(size=8, group_size=g, seed=seed), epoch, n)
    assert np.array_equal(plan.order, again.order) and np.array_equal(plan.partner, again.partner)


def test_epoch_plan_changes_with_epoch_and_seed():
    r = A.AugRecipe(size=8, group_size=16)
    p0 = A.epoch_plan(r, 0, 100)
    assert not np.array_equal(p0.order, A.epoch_plan(r, 1, 100).order)
    assert not np.array_equal(p0.order, A.epoch_plan(A.AugRecipe(size=8, group_size=16, seed=1),
                                                      0, 100).order)
    assert not np.array_equal(p0.partner, A.epoch_plan(r, 1, 100).partner)


def test_epoch_plan_golden():
    plan = A.epoch_plan(A.AugRecipe(size=8, group_size=4), 0, 10)
    assert plan.groups.tolist() == [0, 1, 2]
    assert plan.order.tolist() == [2, 1, 0, 3, 5, 7, 6, 4, 9, 8]
    assert plan.partner.tolist() == [3, 0, 1, 2, 5, 7, 4, 6, 9, 8]


# ------------------------------------------------------------------------------------------
# View parameters


def reference_view(recipe: A.AugRecipe, epoch: int, index: int, height: int, width: int):
    """A plain scalar transcription of torchvision RRC + flip + v2 CutMix, slot by slot."""
    seed, s = recipe.seed, recipe.size
    u = lambda slot: rng.uniform(seed, A.STREAM_VIEW, epoch, index, slot)
    ri = lambda slot, n: rng.randint(seed, A.STREAM_VIEW, epoch, index, slot, n=n)
    area = float(height * width)
    lr0, lr1 = (float(A.det_log(r)) for r in recipe.ratio)
    crop = None
    for a in range(10):
        target = area * (recipe.scale[0] + (recipe.scale[1] - recipe.scale[0]) * u(4 * a))
        aspect = float(A.det_exp(lr0 + (lr1 - lr0) * u(4 * a + 1)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            crop = (ri(4 * a + 2, height - h + 1), ri(4 * a + 3, width - w + 1), h, w)
            break
    if crop is None:
        in_ratio = width / height
        if in_ratio < min(recipe.ratio):
            w, h = width, max(1, round(width / min(recipe.ratio)))
        elif in_ratio > max(recipe.ratio):
            h, w = height, max(1, round(height * max(recipe.ratio)))
        else:
            h, w = height, width
        crop = ((height - h) // 2, (width - w) // 2, h, w)
    flip = u(A.SLOT_FLIP) < recipe.flip_p
    lam, box = 1.0, (0, 0, 0, 0)
    if recipe.mix != "none" and u(A.SLOT_MIX_GATE) < recipe.mix_p:
        assert recipe.mix_alpha == 1.0  # the reference covers the uniform case only
        raw = u(A.SLOT_BETA)
        if recipe.mix == "mixup":
            lam = raw
        else:
            ry, rx = ri(A.SLOT_BOX_Y, s), ri(A.SLOT_BOX_X, s)
            half = int(0.5 * math.sqrt(1.0 - raw) * s)
            y1, x1 = max(ry - half, 0), max(rx - half, 0)
            y2, x2 = min(ry + half, s), min(rx + half, s)
            box = (y1, x1, y2, x2)
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (s * s)
    return VW.ViewParams(*crop, flip=flip, lam=float(np.float32(lam)), box_y1=box[0],
                        box_x1=box[1], box_y2=box[2], box_x2=box[3])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 2**32 - 1),
       height=st.integers(1, 300), width=st.integers(1, 300), size=st.integers(1, 64),
       mix=st.sampled_from(A.MIX_MODES), mix_p=st.sampled_from([0.0, 0.5, 1.0]),
       scale=st.sampled_from([(0.08, 1.0), (0.5, 0.5), (0.9, 1.0)]),
       ratio=st.sampled_from([(3 / 4, 4 / 3), (0.2, 5.0), (1.0, 1.0)]))
def test_vectorized_equals_scalar_reference(seed, epoch, height, width, size, mix, mix_p,
                                            scale, ratio):
    recipe = A.AugRecipe(size=size, seed=seed, mix=mix, mix_p=mix_p, scale=scale, ratio=ratio)
    idx = np.array([0, 1, 2, 7, 2**32 - 1])
    batch = A.view_params_batch(recipe, epoch, idx, height, width)
    for k, i in enumerate(idx.tolist()):
        want = reference_view(recipe, epoch, i, height, width)
        assert batch[k] == want
        assert A.view_params(recipe, epoch, i, height, width) == want


def _check_ranges(p: VW.ViewParams, height: int, width: int, recipe: A.AugRecipe) -> None:
    s = recipe.size
    assert 1 <= p.crop_h <= height and 1 <= p.crop_w <= width
    assert 0 <= p.crop_i <= height - p.crop_h and 0 <= p.crop_j <= width - p.crop_w
    assert 0.0 <= p.lam <= 1.0 and p.lam == float(np.float32(p.lam))
    assert 0 <= p.box_y1 <= p.box_y2 <= s and 0 <= p.box_x1 <= p.box_x2 <= s
    area = (p.box_y2 - p.box_y1) * (p.box_x2 - p.box_x1)
    if recipe.mix == "cutmix":
        assert p.lam == float(np.float32(1.0 - area / (s * s)))
    else:
        assert area == 0
    if recipe.mix == "none":
        assert p.lam == 1.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 1000),
       height=st.integers(1, 512), width=st.integers(1, 512), size=st.integers(1, 256),
       mix=st.sampled_from(A.MIX_MODES), alpha=st.sampled_from([0.2, 1.0, 2.5]))
def test_view_params_ranges(seed, epoch, height, width, size, mix, alpha):
    recipe = A.AugRecipe(size=size, seed=seed, mix=mix, mix_alpha=alpha)
    batch = A.view_params_batch(recipe, epoch, np.arange(40), height, width)
    for k in range(len(batch)):
        _check_ranges(batch[k], height, width, recipe)


def test_per_image_sizes_broadcast():
    recipe = A.AugRecipe(size=16)
    hs, ws = np.array([20, 300, 7]), np.array([50, 40, 7])
    batch = A.view_params_batch(recipe, 3, [4, 5, 6], hs, ws)
    for k, i in enumerate([4, 5, 6]):
        assert batch[k] == A.view_params(recipe, 3, i, int(hs[k]), int(ws[k]))


def test_center_crop_fallback():
    r = A.AugRecipe(size=8)
    # 1 x 100: no attempt can fit (h would need a scale < 0.08), so the fallback decides.
    wide = A.view_params(r, 0, 3, 1, 100)
    assert (wide.crop_i, wide.crop_j, wide.crop_h, wide.crop_w) == (0, 49, 1, 1)
    tall = A.view_params(r, 0, 3, 100, 1)
    assert (tall.crop_i, tall.crop_j, tall.crop_h, tall.crop_w) == (49, 0, 1, 1)
    full = A.view_params(A.AugRecipe(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0)), 0, 3, 30, 30)
    assert (full.crop_i, full.crop_j, full.crop_h, full.crop_w) == (0, 0, 30, 30)


def test_statistics():
    n = 20_000
    idx = np.arange(n)
    flips = A.view_params_batch(A.AugRecipe(size=8, flip_p=0.3, mix="none"), 0, idx, 32, 32).flip
    assert abs(flips.mean() - 0.3) < 0.015
    gate = A.view_params_batch(A.AugRecipe(size=8, mix="mixup", mix_p=0.25), 0, idx, 32, 32)
    assert abs((gate.lam < 1.0).mean() - 0.25) < 0.015
    for alpha in (0.2, 1.0, 2.0):
        lam = A.view_params_batch(A.AugRecipe(size=8, mix="mixup", mix_alpha=alpha), 1, idx,
                                  32, 32).lam.astype(np.float64)
        # symmetric Beta(a, a): mean 1/2, variance 1/(4(2a+1)), 4th central 3/(16(2a+1)(2a+3))
        assert abs(lam.mean() - 0.5) < 0.01
        assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.004
        assert abs(((lam - 0.5) ** 4).mean() - 3 / (16 * (2 * alpha + 1) * (2 * alpha + 3))) < 0.003
    crops = A.view_params_batch(A.AugRecipe(size=8), 2, idx, 64, 64)
    frac = crops.crop_h * crops.crop_w / 64.0**2
    # torchvision's algorithm driven by numpy's generator (2e5 draws) gives 0.4841 +- 0.0005:
    # rejections of too-wide/too-tall large crops pull the mean below that of U(0.08, 1).
    assert frac.min() >= 0.07 and frac.max() <= 1.0 and abs(frac.mean() - 0.4841) < 0.01


def test_view_params_golden():
    """Hard-coded outputs: any change to the generator or the sampling code breaks replay."""
    r = A.AugRecipe(size=32)
    batch = A.view_params_batch(r, 0, np.arange(4), 32, 48)
    assert [batch[k] for k in range(4)] == [
        VW.ViewParams(3, 6, 20, 17, True, 0.701171875, 15, 0, 32, 18),
        VW.ViewParams(2, 21, 18, 15, False, 0.82421875, 4, 0, 22, 10),
        VW.ViewParams(0, 4, 31, 25, False, 0.416015625, 0, 9, 26, 32),
        VW.ViewParams(1, 15, 28, 21, False, 0.859375, 19, 17, 31, 29),
    ]
    r2 = A.AugRecipe(size=24, mix="mixup", mix_alpha=0.2, seed=2**63 + 5)
    batch = A.view_params_batch(r2, 7, np.arange(3), 40, 30)
    assert [batch[k] for k in range(3)] == [
        VW.ViewParams(4, 9, 19, 19, True, 0.15940694510936737, 0, 0, 0, 0),
        VW.ViewParams(7, 3, 19, 17, False, 0.009513958357274532, 0, 0, 0, 0),
        VW.ViewParams(5, 0, 24, 30, True, 0.9999998807907104, 0, 0, 0, 0),
    ]
    r3 = A.AugRecipe(size=24, mix="mixup", mix_alpha=2.0)
    assert A.view_params_batch(r3, 1, np.arange(4), 24, 24).lam.tolist() == [
        0.6424177289009094, 0.23405902087688446, 0.5241701602935791, 0.5912922620773315]


# ------------------------------------------------------------------------------------------
# Explicit columns


def test_explicit_columns_round_trip():
    r = A.AugRecipe(size=16, group_size=5)
    cols = A.epoch_columns(r, 2, 23, 20, 30)
    assert {k: v.dtype for k, v in cols.items()} == VW.EXPLICIT_COLUMNS
    assert all(len(v) == 23 for v in cols.values())
    batch, partner = VW.ViewBatch.from_columns(cols)
    assert np.array_equal(partner, A.epoch_plan(r, 2, 23).partner)
    seeded = A.view_params_batch(r, 2, np.arange(23), 20, 30)
    assert all(batch[k] == seeded[k] for k in range(23))
    again = batch.to_columns(partner)
    assert all(np.array_equal(again[k], cols[k]) for k in cols)
    sub = seeded.take([3, 1])
    assert sub[0] == seeded[3] and sub[1] == seeded[1]


@pytest.mark.parametrize("mutate", [
    lambda c: c.pop("lam"),
    lambda c: c.update(lam=np.full(4, 1.5, np.float32)),
    lambda c: c.update(partner=np.array([0, 1, 2, 9], np.int32)),
    lambda c: c.update(crop_h=np.zeros(4, np.int32)),
    lambda c: c.update(crop_i=np.full(4, 0.5)),
    lambda c: c.update(flip=np.zeros(4, np.int8)),
    lambda c: c.update(box_y2=np.full(4, -1, np.int16)),
    lambda c: c.update(crop_w=np.ones(3, np.int32)),
])
def test_explicit_columns_rejects(mutate):
    cols = A.epoch_columns(A.AugRecipe(size=8), 0, 4, 10, 10)
    mutate(cols)
    with pytest.raises(NrrError):
        VW.ViewBatch.from_columns(cols, path="views.parquet")


# ------------------------------------------------------------------------------------------
# Rendering


def _images(n: int, c: int = 3, h: int = 24, w: int = 24, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=g) for _ in range(n)]


def test_render_full_crop_and_flip_exact():
    img = torch.arange(3 * 6 * 6, dtype=torch.int64).reshape(3, 6, 6).mul(3).to(torch.uint8)
    base = {"crop_i": 0, "crop_j": 0, "crop_h": 6, "crop_w": 6, "lam": 1.0,
            "box_y1": 0, "box_x1": 0, "box_y2": 0, "box_x2": 0}
    plain = V1.render_view(img, VW.ViewParams(flip=False, **base), 6)
    assert plain.dtype == torch.float32 and plain.shape == (3, 6, 6)
    assert torch.equal(plain, img.float() / 255.0)
    flipped = V1.render_view(img, VW.ViewParams(flip=True, **base), 6)
    assert torch.equal(flipped, img.float().flip(-1) / 255.0)
    assert flipped[0, 0, 0].item() == float(np.float32(np.float32(img[0, 0, 5].item()) / np.float32(255)))
    # a same-size crop of a larger image is exact too
    big = torch.arange(10 * 10, dtype=torch.int64).reshape(1, 10, 10).to(torch.uint8)
    p = VW.ViewParams(2, 3, 4, 4, False, 1.0, 0, 0, 0, 0)
    assert torch.equal(V1.render_view(big, p, 4), big[:, 2:6, 3:7].float() / 255.0)


def test_render_resize_constant_and_bounds():
    img = torch.full((3, 17, 11), 200, dtype=torch.uint8)
    p = VW.ViewParams(1, 2, 13, 7, True, 1.0, 0, 0, 0, 0)
    out = V1.render_view(img, p, 9)
    assert out.shape == (3, 9, 9)
    assert torch.allclose(out, torch.full_like(out, 200 / 255.0), atol=1e-6)
    with pytest.raises(NrrError):
        V1.render_view(img, VW.ViewParams(10, 0, 8, 7, False, 1.0, 0, 0, 0, 0), 9)
    with pytest.raises(NrrError):
        V1.render_view(img.float(), p, 9)


def test_mix_views():
    a = torch.zeros(2, 8, 8)
    b = torch.ones(2, 8, 8)
    p = VW.ViewParams(0, 0, 8, 8, False, 0.75, 2, 1, 6, 3)
    cut = V1.mix_views(a, b, p, "cutmix")
    assert cut[:, 2:6, 1:3].eq(1).all() and cut.sum().item() == 2 * 4 * 2
    assert a.sum().item() == 0  # inputs untouched
    mixed = V1.mix_views(a + 0.5, b, p, "mixup")
    assert torch.equal(mixed, (a + 0.5) * 0.75 + b * 0.25)
    assert V1.mix_views(a, b, p, "none") is a
    with pytest.raises(NrrError):
        V1.mix_views(a, b, p, "cutout")


@pytest.mark.parametrize("mix", A.MIX_MODES)
def test_render_batch_v1_matches_parts_and_is_deterministic(mix):
    """Version-1 stores replay with the per-view renderer, exactly as before version 2 existed."""
    recipe = A.AugRecipe(size=16, group_size=6, mix=mix, seed=11, version=1)
    imgs = _images(14, h=20, w=28)
    plan = A.epoch_plan(recipe, 4, len(imgs))
    idx = plan.order[:8]
    views, lam, partner = R.render_batch(imgs, idx, plan, recipe, 4)
    assert views.shape == (8, 3, 16, 16) and views.dtype == torch.float32
    assert lam.dtype == torch.float32 and partner.dtype == torch.int64
    assert partner.tolist() == plan.partner[idx].tolist()
    for k, (i, q) in enumerate(zip(idx.tolist(), partner.tolist(), strict=True)):
        p_i = A.view_params(recipe, 4, i, 20, 28)
        p_q = A.view_params(recipe, 4, q, 20, 28)
        want = V1.mix_views(V1.render_view(imgs[i], p_i, 16), V1.render_view(imgs[q], p_q, 16),
                           p_i, mix)
        assert torch.equal(views[k], want)
        assert lam[k].item() == p_i.lam
    views2, lam2, partner2 = R.render_batch(imgs, idx, plan, recipe, 4)
    assert torch.equal(views, views2) and torch.equal(lam, lam2) and torch.equal(partner, partner2)


@pytest.mark.parametrize("version", A.REPLAYED_VERSIONS)
def test_render_batch_thread_count_and_group_dict_and_explicit(version):
    recipe = A.AugRecipe(size=12, group_size=5, seed=3, version=version)
    imgs = _images(12, c=1, h=15, w=9, seed=1)
    plan = A.epoch_plan(recipe, 0, len(imgs))
    group = list(range(5, 10))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = R.render_batch(imgs, group, plan, recipe, 0)
        torch.set_num_threads(2)
        two = R.render_batch(imgs, group, plan, recipe, 0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0])
    # a reader holding only this group's images renders the same batch
    held = {i: imgs[i] for i in group}
    assert torch.equal(R.render_batch(held, group, plan, recipe, 0)[0], one[0])
    # explicit mode from stored columns renders the same views
    cols = A.epoch_columns(recipe, 0, len(imgs), 15, 9)
    ex = R.render_batch(imgs, group, None, recipe, 0, explicit=cols)
    assert all(torch.equal(a, b) for a, b in zip(ex, one, strict=True))
    parsed = VW.ViewBatch.from_columns(cols)
    assert torch.equal(R.render_batch(imgs, group, None, recipe, 0, explicit=parsed)[0], one[0])


@pytest.mark.parametrize("version", A.REPLAYED_VERSIONS)
def test_render_batch_errors(version):
    recipe = A.AugRecipe(size=8, group_size=4, version=version)
    imgs = _images(8, h=8, w=8)
    plan = A.epoch_plan(recipe, 0, 8)
    with pytest.raises(NrrError):
        R.render_batch(imgs, [0, 1], plan, recipe, 1)  # plan of another epoch
    with pytest.raises(NrrError):
        R.render_batch(imgs, [], plan, recipe, 0)
    with pytest.raises(NrrError):
        R.render_batch(imgs, [8], plan, recipe, 0)
