"""DBR distances and student losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nrrstore.errors import NrrError
from nrrstore.train import losses as L


def _batch(b: int = 6, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g) * 3
    y = torch.randint(0, k, (b,), generator=g)
    yp = torch.randint(0, k, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    return logits, y, yp, lam


def test_mixed_onehot():
    y, yp = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    t = L.mixed_onehot(y, yp, torch.tensor([0.25, 0.5, 1.0]), 3)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(L.mixed_onehot(y, yp, 0.0, 3), F.one_hot(yp, 3).float())


def test_distances_match_cross_entropy_and_soft_ce():
    logits, y, yp, lam = _batch()
    d_org, d_aug = L.distances(logits, y, yp, lam)
    assert d_org.shape == d_aug.shape == (6,) and d_org.dtype == torch.float32
    assert torch.allclose(d_org, F.cross_entropy(logits, y, reduction="none"), atol=1e-6)
    soft = L.soft_cross_entropy(logits, L.mixed_onehot(y, yp, lam, 5))
    assert torch.allclose(d_aug, soft, atol=1e-5)
    assert torch.allclose(d_aug, F.cross_entropy(logits, L.mixed_onehot(y, yp, lam, 5),
                                                 reduction="none"), atol=1e-5)
    # lam = 1 makes both distances the plain cross-entropy
    d1_org, d1_aug = L.distances(logits, y, yp, 1.0)
    assert torch.equal(d1_org, d1_aug)


def test_distances_low_precision_and_large_logits():
    logits, y, yp, lam = _batch()
    d_org, d_aug = L.distances(logits.bfloat16(), y, yp, lam)
    assert d_org.dtype == torch.float32 and d_aug.dtype == torch.float32
    big = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
    d_org, d_aug = L.distances(big, torch.tensor([1, 2]), torch.tensor([0, 1]), 0.5)
    assert torch.isfinite(d_org).all() and torch.isfinite(d_aug).all()
    assert d_org[0].item() == pytest.approx(2e4) and d_aug[0].item() == pytest.approx(1e4)
    with pytest.raises(NrrError):
        L.distances(torch.zeros(3), y[:1], yp[:1], 0.5)


def test_dbr_loss_zero_at_teacher_and_gradients_flow():
    logits, y, yp, lam = _batch()
    d_org_t, d_aug_t = L.distances(logits, y, yp, lam)
    for norm in L.DBR_NORMS:
        student = logits.clone().requires_grad_(True)
        loss = L.dbr_loss(student, y, yp, lam, d_org_t, d_aug_t, norm=norm)
        assert loss.item() == pytest.approx(0.0, abs=1e-10)
    student = (logits + torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
               ).requires_grad_(True)
    loss = L.dbr_loss(student, y, yp, lam, d_org_t.half(), d_aug_t.half())
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dbr_loss_norms():
    logits, y, yp, lam = _batch(seed=3)
    d_org, d_aug = L.distances(logits, y, yp, lam)
    t_org, t_aug = d_org + torch.linspace(-2, 2, 6), d_aug - 0.3
    diff = torch.cat([d_org - t_org, d_aug - t_aug])
    assert L.dbr_loss(logits, y, yp, lam, t_org, t_aug, "l2").item() == pytest.approx(
        (diff ** 2).mean().item(), rel=1e-6)
    assert L.dbr_loss(logits, y, yp, lam, t_org, t_aug, "l1").item() == pytest.approx(
        diff.abs().mean().item(), rel=1e-6)
    huber = torch.where(diff.abs() < 1, 0.5 * diff ** 2, diff.abs() - 0.5).mean()
    assert L.dbr_loss(logits, y, yp, lam, t_org, t_aug, "smooth_l1").item() == pytest.approx(
        huber.item(), rel=1e-6)
    with pytest.raises(NrrError):
        L.dbr_loss(logits, y, yp, lam, t_org, t_aug, "l3")
    with pytest.raises(NrrError):
        L.dbr_loss(logits, y, yp, lam, t_org[:3], t_aug[:3])


def test_sce_and_objective():
    logits, y, yp, lam = _batch(seed=5)
    sce = L.sce_loss(logits, y, yp, lam)
    assert sce.item() == pytest.approx(
        L.soft_cross_entropy(logits, L.mixed_onehot(y, yp, lam, 5)).mean().item(), rel=1e-6)
    assert L.sce_loss(logits, y, yp, 1.0).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-6)
    t_org, t_aug = torch.rand(6), torch.rand(6)
    obj = L.dbr_objective(logits, y, yp, lam, t_org, t_aug, alpha_dbr=0.7, norm="l1")
    want = sce + 0.7 * L.dbr_loss(logits, y, yp, lam, t_org, t_aug, "l1")
    assert obj.item() == pytest.approx(want.item(), rel=1e-6)
    assert L.dbr_objective(logits, y, yp, lam, t_org, t_aug, alpha_dbr=0).item() == sce.item()


def test_kd_loss():
    logits, _, _, _ = _batch(seed=7)
    assert L.kd_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert L.kd_loss(logits, logits.softmax(-1), from_logits=False).item() == pytest.approx(
        0.0, abs=1e-6)
    teacher = logits.flip(0)
    student = logits.clone().requires_grad_(True)
    for T in (1.0, 4.0):
        pt = F.softmax(teacher / T, -1)
        manual = (pt * (pt.log() - F.log_softmax(logits / T, -1))).sum(-1).mean() * T * T
        got = L.kd_loss(student, teacher, T=T)
        assert got.item() == pytest.approx(manual.item(), rel=1e-5)
        probs = L.kd_loss(student, teacher.softmax(-1), T=T, from_logits=False)
        assert probs.item() == pytest.approx(manual.item(), rel=1e-4)
    L.kd_loss(student, teacher, T=2.0).backward()
    assert student.grad.abs().sum() > 0
    with pytest.raises(NrrError):
        L.kd_loss(logits, teacher, T=0.0)
