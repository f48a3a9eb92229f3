"""NRR: non-critical region refinement (NRR-DD), plus the uint8 helpers every distill step shares.

For a batch of synthetic images x (pixels in [0,1]) with labels y::

    C = CAM(x0, y)                      once, on the initial images (nrrstore.models.cam)
    M = max(0, eps - C)                 [B,1,H,W], broadcast over channels
    repeat `iterations` times:
        L = CE(T(normalize(x)), y) + alpha_bn * L_bn      (L_bn: SRe2L BatchNorm statistics)
        x <- clamp(x - M * u, 0, 1)     only where M > 0
    x <- round(x * 255) / 255           what the store will hold

with u = lr * grad ("sgd", the update as the paper writes it) or u = Adam's step computed from the
raw gradient ("adam"; the mask scales the update, not the gradient, so Adam's normalisation cannot
undo it). Pixels whose CAM is >= eps (the critical region) are never written: the update goes
through `torch.where(M > 0, ...)`, so they stay bit-identical, also after the final quantization
when the input was uint8-representable.

The NRR-DD paper publishes none of eps, the step size, the iteration count, the optimizer or
alpha_bn; the defaults of `NrrConfig` are choices of ours, documented field by field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrrstore.distill.presets import NRR_REFINE
from nrrstore.errors import NrrError
from nrrstore.models.bn_stats import BNStatsLoss
from nrrstore.models.cam import CamModel
from nrrstore.models.checkpoint import Teacher
from nrrstore.progress import StepProgress

OPTIMIZERS = ("sgd", "adam")
ADAM_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Helpers shared with CIDD: the store keeps uint8 pixels, so every image is made representable.


def to_uint8(x01: Tensor) -> Tensor:
    """[0,1] floats -> uint8 by round(x * 255) (values outside [0,1] are clamped first)."""
    return torch.round(x01.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def from_uint8(u8: Tensor) -> Tensor:
    """uint8 -> float32 k / 255, the exact inverse of `to_uint8` on its outputs."""
    return u8.to(torch.float32).div_(255.0)


def quantize(x01: Tensor) -> Tensor:
    """float32 images exactly as they will be stored and read back (`from_uint8(to_uint8(x))`)."""
    return from_uint8(to_uint8(x01))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (BatchNorm must use, not update, its running statistics); restore after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Configuration.


def _number(value: Any, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NrrError(None, f"NRR: {name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise NrrError(None, f"NRR: {name} must lie in {bracket}{lo}, {hi}], got {value!r}")
    return v


@dataclass(frozen=True)
class NrrConfig:
    """NRR parameters; none is published by the NRR-DD paper. Defaults: the ``nrr`` preset's
    (:mod:`nrrstore.distill.presets`), chosen by the study in benchmarks/RESULTS.md.

    eps: CAM threshold. Pixels with normalized CAM >= eps are critical and frozen; the others move
        with weight eps - CAM (at most eps). 0.5 = the upper half of each image's CAM range is kept.
    lr: step size in pixel units ([0,1] scale). With "adam" one step moves a pixel by about
        lr * mask, so 0.01 (~2.5 grey levels, at most half that under eps = 0.5) lets 200 steps
        traverse the whole range where the teacher asks for it. With "sgd" lr multiplies the raw
        gradient, which is orders of magnitude smaller: give sgd a far larger lr (e.g. 10-100).
    iterations: refinement steps; 200 refines real patches (they start close to the class) at a
        cost of 200 forward+backward passes per image.
    alpha_bn: weight of the BatchNorm statistics loss (SRe2L's r_bn is 0.01). Ignored (no hooks)
        for teachers without BatchNorm, e.g. the GroupNorm ConvNets.
    optimizer: "adam" (default; SRe2L's optimizer for synthetic images) or "sgd" (x <- x - M lr grad,
        the update exactly as the paper writes it).
    betas: Adam's moment decays; (0.5, 0.9) are SRe2L's values for image synthesis.
    first_bn_weight: weight of the first BN layer in L_bn (10 in SRe2L).
    refine: False skips refinement entirely (the RDED-style ablation).
    """

    eps: float = NRR_REFINE["eps"]
    lr: float = NRR_REFINE["lr"]
    iterations: int = NRR_REFINE["iterations"]
    alpha_bn: float = NRR_REFINE["alpha_bn"]
    optimizer: str = NRR_REFINE["optimizer"]
    betas: tuple[float, float] = NRR_REFINE["betas"]
    first_bn_weight: float = NRR_REFINE["first_bn_weight"]
    refine: bool = NRR_REFINE["refine"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _number(self.eps, "eps", 0.0))
        object.__setattr__(self, "lr", _number(self.lr, "lr", 0.0, lo_open=True))
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise NrrError(None, f"NRR: iterations must be an integer >= 0, got {self.iterations!r}")
        object.__setattr__(self, "alpha_bn", _number(self.alpha_bn, "alpha_bn", 0.0))
        if self.optimizer not in OPTIMIZERS:
            raise NrrError(None, f"NRR: unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise NrrError(None, f"NRR: betas must be a pair of numbers, got {self.betas!r}")
        betas = tuple(_number(b, "betas", 0.0, 1.0) for b in self.betas)
        if betas[0] == 1.0 or betas[1] == 1.0:
            raise NrrError(None, f"NRR: betas must be < 1, got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "first_bn_weight", _number(self.first_bn_weight, "first_bn_weight", 0.0))
        if not isinstance(self.refine, bool):
            raise NrrError(None, f"NRR: refine must be true or false, got {self.refine!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"eps": self.eps, "lr": self.lr, "iterations": self.iterations, "alpha_bn": self.alpha_bn,
                "optimizer": self.optimizer, "betas": list(self.betas), "first_bn_weight": self.first_bn_weight,
                "refine": self.refine}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NrrConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise NrrError(None, f"NRR: unknown parameters {', '.join(unknown)}")
        kw = dict(d)
        if "betas" in kw and isinstance(kw["betas"], list):
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Refinement.


def _check_inputs(teacher: Teacher, images01: Tensor, labels: Tensor) -> None:
    if not isinstance(images01, Tensor) or images01.dim() != 4 or not images01.is_floating_point():
        raise NrrError(None, "NRR: images must be a float tensor [B, C, H, W]")
    b, c, h, w = images01.shape
    if c != teacher.in_channels or h != teacher.image_size or w != teacher.image_size:
        raise NrrError(None, f"NRR: images are {c}x{h}x{w}, the teacher takes "
                             f"{teacher.in_channels}x{teacher.image_size}x{teacher.image_size}")
    if b and (float(images01.min()) < 0.0 or float(images01.max()) > 1.0):
        raise NrrError(None, "NRR: pixel values must lie in [0, 1]")
    if not isinstance(labels, Tensor) or labels.shape != (b,) or labels.is_floating_point():
        raise NrrError(None, f"NRR: need one integer label per image ({b}), got labels of shape "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if b and (int(labels.min()) < 0 or int(labels.max()) >= teacher.num_classes):
        raise NrrError(None, f"NRR: labels must lie in [0, {teacher.num_classes})")


def _loss(teacher: Teacher, x: Tensor, y: Tensor, bn: BNStatsLoss | None) -> tuple[Tensor, Tensor]:
    """(mean CE, BN loss or 0) for one forward pass of x."""
    logits = teacher.model(teacher.normalize(x))
    ce = F.cross_entropy(logits.float(), y)
    bn_loss = bn.loss() if bn is not None else torch.zeros((), device=x.device)
    return ce, bn_loss


def refine(
    teacher: Teacher,
    images01: Tensor,
    labels: Tensor,
    cfg: NrrConfig = NrrConfig(),
    progress: StepProgress | None = None,
    cam_model: CamModel | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Refine the non-critical regions of `images01` [B,C,H,W] (pixels in [0,1]) for `labels` [B].

    Returns (refined images, float32 on the teacher's device, uint8-representable; stats). Classes
    may be mixed within a batch. The BN loss is a batch statistic, so it depends on which images
    share a batch (SRe2L batches many classes together to match dataset-wide statistics); the CE
    term is per image. The gradient is taken of B * L (sum of per-image CE + B * alpha_bn * L_bn):
    both terms' per-image gradients then do not shrink with the batch size, so an image's update
    does not depend on how many images it was batched with (BN aside). Only the images get
    gradients (`torch.autograd.grad` w.r.t. them); the teacher's parameters are never touched.

    `cfg.refine = False` returns a copy of the inputs, unchanged, without running the teacher.
    `cam_model` defaults to `CamModel(teacher.model)`; pass one with `layer=` for Grad-CAM.
    """
    _check_inputs(teacher, images01, labels)
    if not cfg.refine:
        return images01.clone(), {"refined": False}
    model = teacher.model
    dev = model_device(model)
    x0 = images01.detach().to(dev, torch.float32)
    y = labels.to(dev, torch.long)
    batch = x0.shape[0]
    if batch == 0:
        return x0.clone(), {"refined": True, "images": 0}
    with eval_mode(model):
        cams = (cam_model or CamModel(model)).cam(teacher.normalize(x0), y)  # [B,H,W] in [0,1]
        mask = (cfg.eps - cams).clamp_min(0.0).unsqueeze(1).to(torch.float32)  # [B,1,H,W]
        active = mask > 0
        bn = BNStatsLoss(model, cfg.first_bn_weight) if cfg.alpha_bn > 0 else None
        if bn is not None and not bn.has_bn:
            bn.remove()
            bn = None
        try:
            x, history = _iterate(teacher, x0, y, mask, active, bn, cfg, progress)
            out = quantize(x)
            with torch.no_grad():
                ce_final, bn_final = _loss(teacher, out, y, bn)
        finally:
            if bn is not None:
                bn.remove()
    stats: dict[str, Any] = {
        "refined": True,
        "images": batch,
        "iterations": cfg.iterations,
        "optimizer": cfg.optimizer,
        "refined_fraction": float(active.float().mean()),
        "bn_loss_used": bn is not None,
        "ce_final": float(ce_final),
        "bn_final": float(bn_final),
        "loss_final": float(ce_final + cfg.alpha_bn * bn_final),
        "loss_history": [ce + cfg.alpha_bn * b for ce, b in history],
    }
    if history:
        stats.update(ce_initial=history[0][0], bn_initial=history[0][1],
                     loss_initial=history[0][0] + cfg.alpha_bn * history[0][1])
    else:
        stats.update(ce_initial=stats["ce_final"], bn_initial=stats["bn_final"], loss_initial=stats["loss_final"])
    return out, stats


def _iterate(
    teacher: Teacher,
    x0: Tensor,
    y: Tensor,
    mask: Tensor,
    active: Tensor,
    bn: BNStatsLoss | None,
    cfg: NrrConfig,
    progress: StepProgress | None,
) -> tuple[Tensor, list[tuple[float, float]]]:
    """The masked descent loop; returns the final iterate and (CE, BN loss) before each step."""
    x = x0.clone()
    batch = x.shape[0]
    b1, b2 = cfg.betas
    m = torch.zeros_like(x) if cfg.optimizer == "adam" else None
    v = torch.zeros_like(x) if cfg.optimizer == "adam" else None
    recorded: list[Tensor] = []  # kept on the device; one sync at the end, not one per step
    for step in range(cfg.iterations):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            ce, bn_loss = _loss(teacher, xg, y, bn)
            total = (ce + cfg.alpha_bn * bn_loss) * batch
            (grad,) = torch.autograd.grad(total, xg)
        recorded.append(torch.stack([ce.detach(), bn_loss.detach().float()]))
        with torch.no_grad():
            if m is not None and v is not None:
                m.mul_(b1).add_(grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
                t = step + 1
                update = (m / (1.0 - b1**t)).div_((v / (1.0 - b2**t)).sqrt_().add_(ADAM_EPS)).mul_(cfg.lr)
            else:
                update = grad.mul(cfg.lr)
            x = torch.where(active, (x - mask * update).clamp_(0.0, 1.0), x)
        if progress is not None:
            progress(step + 1, cfg.iterations)
    history = [tuple(row) for row in torch.stack(recorded).tolist()] if recorded else []
    return x, history
