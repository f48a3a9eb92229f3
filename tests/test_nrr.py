"""NRR on real Fashion-MNIST images with small teachers trained here (GroupNorm and BatchNorm)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from nrrstore.distill.nrr import NrrConfig, from_uint8, quantize, refine, to_uint8
from nrrstore.errors import NrrError
from nrrstore.models.cam import CamModel
from nrrstore.models.checkpoint import Teacher
from tests._builders import class_images, trained_teacher


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return trained_teacher("group")


@pytest.fixture(scope="module")
def hard_batch(teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight held-out real images of mixed classes that the teacher finds hard (uint8, labels)."""
    imgs, labels = [], []
    for label in (0, 2, 4, 6):  # T-shirt, pullover, coat, shirt: the classes it confuses most
        _, x = class_images(label, 30)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(teacher.model(teacher.normalize(from_uint8(x))),
                                                   torch.full((30,), label), reduction="none")
        imgs.append(x[ce.argsort(descending=True)[:2]])
        labels += [label, label]
    return torch.cat(imgs), torch.tensor(labels)


def frozen_mask(teacher: Teacher, x01: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    cam = CamModel(teacher.model).cam(teacher.normalize(x01), labels)
    return (eps - cam).clamp_min(0).unsqueeze(1).expand_as(x01) == 0


def test_uint8_helpers_round_trip_exactly() -> None:
    all_values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(all_values)), all_values)
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    q = quantize(x)
    assert torch.equal(quantize(q), q) and q.min() >= 0 and q.max() <= 1
    assert torch.equal(to_uint8(q), torch.round(x.clamp(0, 1) * 255).to(torch.uint8))


def test_config_defaults_validation_and_round_trip() -> None:
    cfg = NrrConfig()
    assert (cfg.eps, cfg.optimizer, cfg.refine) == (0.5, "adam", True)
    assert NrrConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"optimizer": "lbfgs"}, {"lr": 0.0}, {"eps": -0.1}, {"iterations": -1}, {"iterations": 2.5},
                {"alpha_bn": float("nan")}, {"betas": (0.9, 1.0)}, {"refine": "yes"}):
        with pytest.raises(NrrError):
            NrrConfig(**bad)


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.02), ("sgd", 30.0)])
def test_critical_pixels_stay_bit_identical(teacher: Teacher, hard_batch, optimizer: str, lr: float) -> None:
    u8, labels = hard_batch
    x = from_uint8(u8)
    cfg = NrrConfig(eps=0.5, lr=lr, iterations=15, optimizer=optimizer)
    out, stats = refine(teacher, x, labels, cfg)
    frozen = frozen_mask(teacher, x, labels, cfg.eps)
    assert 0 < frozen.float().mean() < 1
    assert stats["refined_fraction"] == pytest.approx(1 - frozen[:, :1].float().mean().item())
    assert torch.equal(out[frozen].view(torch.int32), x[frozen].view(torch.int32))  # same bits
    assert torch.equal(to_uint8(out)[frozen], u8[frozen])  # also as stored
    assert (out[~frozen] != x[~frozen]).float().mean() > 0.2  # the rest did move
    assert torch.equal(quantize(out), out) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.02), ("sgd", 30.0)])
def test_cross_entropy_decreases(teacher: Teacher, hard_batch, optimizer: str, lr: float) -> None:
    u8, labels = hard_batch
    out, stats = refine(teacher, from_uint8(u8), labels, NrrConfig(lr=lr, iterations=40, optimizer=optimizer))
    history = stats["loss_history"]
    assert len(history) == 40 and stats["ce_initial"] == history[0]
    assert stats["ce_final"] < 0.7 * stats["ce_initial"]
    assert history[-1] < history[len(history) // 2] < history[0]
    assert not stats["bn_loss_used"] and stats["bn_final"] == 0.0  # GroupNorm teacher: no BN term
    with torch.no_grad():  # ce_final describes the returned (quantized) images
        ce = torch.nn.functional.cross_entropy(teacher.model(teacher.normalize(out)), labels)
    assert float(ce) == pytest.approx(stats["ce_final"], rel=1e-5)


def test_values_stay_in_range_under_large_steps(teacher: Teacher, hard_batch) -> None:
    u8, labels = hard_batch
    out, _ = refine(teacher, from_uint8(u8), labels, NrrConfig(eps=1.0, lr=0.5, iterations=5))
    assert out.min() == 0.0 and out.max() == 1.0  # the clamp was hit on both sides
    assert torch.equal(quantize(out), out)


def test_refine_false_is_the_identity_and_runs_nothing(teacher: Teacher, hard_batch) -> None:
    u8, labels = hard_batch
    x = from_uint8(u8) * 0.999  # deliberately not uint8-representable: nothing may touch it
    calls = []
    handle = teacher.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out, stats = refine(teacher, x, labels, NrrConfig(refine=False))
    finally:
        handle.remove()
    assert torch.equal(out, x) and out is not x
    assert stats == {"refined": False} and calls == []


def test_teacher_gets_no_gradients_and_keeps_its_mode(hard_batch) -> None:
    teacher = trained_teacher("group")
    u8, labels = hard_batch
    model = teacher.model
    model.requires_grad_(True)  # even a teacher whose parameters require grad is left untouched
    model.train()
    for p in model.parameters():
        p.grad = None
    try:
        refine(teacher, from_uint8(u8), labels, NrrConfig(iterations=3))
        assert all(p.grad is None for p in model.parameters())
        assert model.training
    finally:
        model.eval().requires_grad_(False)


def test_an_image_is_refined_the_same_alone_or_in_a_batch(teacher: Teacher, hard_batch) -> None:
    u8, labels = hard_batch
    x = from_uint8(u8)
    for cfg in (NrrConfig(lr=0.02, iterations=10), NrrConfig(lr=30.0, iterations=10, optimizer="sgd")):
        together, _ = refine(teacher, x, labels, cfg)
        alone = torch.cat([refine(teacher, x[i:i + 1], labels[i:i + 1], cfg)[0] for i in (0, 5)])
        diff = (together[[0, 5]] - alone).abs()
        assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 0.01  # float noise at most


def test_batchnorm_teacher_includes_the_bn_loss(hard_batch) -> None:
    bn_teacher = trained_teacher("batch")
    u8, labels = hard_batch
    x = from_uint8(u8)
    cfg = NrrConfig(lr=0.02, iterations=20, alpha_bn=0.05)
    out, stats = refine(bn_teacher, x, labels, cfg)
    assert stats["bn_loss_used"] and stats["bn_initial"] > 0
    assert stats["loss_initial"] == pytest.approx(stats["ce_initial"] + 0.05 * stats["bn_initial"])
    assert stats["loss_final"] < stats["loss_initial"]
    assert np.mean(stats["loss_history"][-5:]) < np.mean(stats["loss_history"][:5])
    without, stats0 = refine(bn_teacher, x, labels, NrrConfig(lr=0.02, iterations=20, alpha_bn=0.0))
    assert not stats0["bn_loss_used"]
    assert not torch.equal(out, without)  # the BN term changed the result
    # Hooks are removed afterwards: a plain forward leaves no trace.
    assert all(not m._forward_hooks for m in bn_teacher.model.modules())


def test_progress_and_bad_inputs(teacher: Teacher, hard_batch) -> None:
    u8, labels = hard_batch
    x = from_uint8(u8)
    seen: list[tuple[int, int]] = []
    refine(teacher, x[:2], labels[:2], NrrConfig(iterations=4), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(NrrError, match="\\[0, 1\\]"):
        refine(teacher, x * 2, labels, NrrConfig(iterations=1))
    with pytest.raises(NrrError, match="teacher takes 1x28x28"):
        refine(teacher, x[:, :, :14], labels, NrrConfig(iterations=1))
    with pytest.raises(NrrError, match="labels must lie in"):
        refine(teacher, x, labels + 10, NrrConfig(iterations=1))
    with pytest.raises(NrrError, match="one integer label per image"):
        refine(teacher, x, labels[:3], NrrConfig(iterations=1))


def test_shipped_batchnorm_teacher_bn_loss_is_nonzero_and_drops() -> None:
    """The shipped BN teacher gives NRR a working image prior: on a mixed-class batch of real images the
    BN-statistics loss is well above zero and refinement lowers it (alongside the cross-entropy)."""
    from pathlib import Path

    from nrrstore.models import load_teacher
    from tests._real import fmnist

    root = Path(__file__).resolve().parents[1]
    teacher = load_teacher(root / "data" / "teachers" / "convnet3bn-fmnist.pt")
    assert teacher.arch_kwargs.get("norm") == "batch"
    samples = fmnist("train", 3)  # 3 real images of each class: a mixed-class batch, as distill refines
    x = from_uint8(torch.from_numpy(np.stack([s[1] for s in samples])).unsqueeze(1))
    y = torch.tensor([s[2] for s in samples])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, stats = refine(teacher, x, y, NrrConfig(iterations=15, alpha_bn=1.0))
    finally:
        torch.set_num_threads(before)
    assert stats["bn_loss_used"] and stats["bn_initial"] > 0.1
    assert stats["bn_final"] < stats["bn_initial"] and stats["ce_final"] < stats["ce_initial"]
