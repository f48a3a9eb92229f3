"""Training a teacher classifier; the caller supplies the batches (evaluation: `nrrstore.train.accuracy`).

Default recipe: SGD, momentum 0.9, lr 0.01, weight decay 5e-4 (the ConvNet recipe of the
dataset-distillation literature), linear warm-up over the first 5% of steps, then cosine decay to 0.
``optimizer="adam"`` is the alternative; the shipped teachers' recipes and accuracies are in data/teachers/.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrrstore.devices import resolve_device
from nrrstore.errors import NrrError
from nrrstore.progress import StepProgress

Batches = Callable[[int], Iterable[tuple[Tensor, Tensor]]]
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class Fit:
    """How `train_classifier` runs beyond the optimizer: the loss's label smoothing, the memory format
    (channels_last: 1.27x images/s for a ResNet-18 at 128 px on this AVX2 CPU, benchmarks/train_speed.py),
    and resumability. ``on_epoch(state)`` receives, after every epoch, a plain state (``epoch`` done,
    ``step``, ``model``, ``optimizer``, ``train_loss``, ``train_top1``) that ``resume`` takes back."""

    label_smoothing: float = 0.0
    channels_last: bool = False
    resume: dict[str, Any] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def train_classifier(
    model: nn.Module,
    batches: Batches,
    epochs: int = 1,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: StepProgress | None = None,
    *,
    momentum: float = 0.9,
    warmup: float = 0.05,
    steps_per_epoch: int | None = None,
    fit: Fit | None = None,
) -> dict[str, Any]:
    """Train `model` in place with cross-entropy; returns a plain-data training record.

    `batches(epoch)` yields (normalized float images [N,C,H,W], int64 labels [N]); data order and
    augmentation are the caller's. The learning rate warms up linearly over `warmup` (a fraction of all
    steps) and then follows a cosine to 0; the step count is `steps_per_epoch`, else `len()` of the first
    epoch's batches. If neither is known the cosine is applied per epoch and there is no warm-up.
    Deterministic for a given seed and batch sequence; the global RNG state is restored afterwards.
    ``fit`` adds label smoothing, channels_last, and resumability (a state at every epoch's end, and a run
    that continues from one gives the same weights as one that never stopped).
    """
    fit = fit or Fit()
    if optimizer not in OPTIMIZERS:
        raise NrrError(None, f"unknown optimizer '{optimizer}'; known: {', '.join(OPTIMIZERS)}")
    if epochs < 1 or lr <= 0 or not 0 <= warmup < 1:
        raise NrrError(None, f"need epochs >= 1, lr > 0 and 0 <= warmup < 1 (got {epochs}, {lr}, {warmup})")
    dev = resolve_device(device)
    fork = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        model.to(dev).train()
        if fit.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch accepts it; its stubs do not
        opt = _optimizer(model, optimizer, lr, weight_decay, momentum)
        if fit.resume is not None:
            model.load_state_dict(fit.resume["model"])
            opt.load_state_dict(fit.resume["optimizer"])
        record = _run(model, batches, epochs, lr, warmup, steps_per_epoch, opt, dev, progress, fit)
        if fit.channels_last:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    record.update(optimizer=optimizer, lr=lr, weight_decay=weight_decay, seed=seed, epochs=epochs)
    if optimizer == "sgd":
        record["momentum"] = momentum
    return record


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _lr_at(step: int, total: int, base: float, warmup_steps: int) -> float:
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total - warmup_steps)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _run(
    model: nn.Module,
    batches: Batches,
    epochs: int,
    lr: float,
    warmup: float,
    steps_per_epoch: int | None,
    opt: torch.optim.Optimizer,
    dev: torch.device,
    progress: StepProgress | None,
    fit: Fit,
) -> dict[str, Any]:
    start = time.perf_counter()
    state = fit.resume or {}
    first = int(state.get("epoch", 0))
    step = int(state.get("step", 0))
    losses: list[float] = list(state.get("train_loss", []))
    top1: list[float] = list(state.get("train_top1", []))
    total: int | None = None if steps_per_epoch is None else steps_per_epoch * epochs
    warmup_steps = 0 if total is None else round(warmup * total)
    fmt = torch.channels_last if fit.channels_last else torch.contiguous_format
    for epoch in range(first, epochs):
        epoch_batches = batches(epoch)
        if total is None and epoch == first and isinstance(epoch_batches, Sized):
            total = len(epoch_batches) * epochs
            warmup_steps = round(warmup * total)
        loss_sum, correct, seen = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long), 0
        for x, y in epoch_batches:
            rate = _lr_at(step, total, lr, warmup_steps) if total else _lr_at(epoch, epochs, lr, 0)
            for group in opt.param_groups:
                group["lr"] = rate
            x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(dev, dtype=torch.long, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=fit.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            step += 1
            if progress is not None:
                progress(step, total)
        if seen == 0:
            raise NrrError(None, f"epoch {epoch} had no training batches")
        mean_loss = float(loss_sum) / seen  # one device sync per epoch, not per step
        if not math.isfinite(mean_loss):
            raise NrrError(None, f"training diverged in epoch {epoch} (loss {mean_loss}); lower the learning rate")
        losses.append(mean_loss)
        top1.append(float(correct) / seen)
        if fit.on_epoch is not None:
            fit.on_epoch({"epoch": epoch + 1, "step": step, "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "train_loss": losses, "train_top1": top1})
    return {"steps": step, "warmup_steps": warmup_steps, "train_loss": losses, "train_top1": top1,
            "seconds": round(time.perf_counter() - start, 3), "resumed_at_epoch": first}
