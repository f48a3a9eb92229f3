"""Top-1 and cross-entropy of a classifier on labelled batches: one evaluation for teachers and students.

The caller supplies the batches already in the model's input space (normalized, at its size): a
teacher's held-out shards (`nrrstore.train.teacher_job`) or the real images a student is tested on
(`nrrstore.train.student.val_batches`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrrstore.errors import NrrError
from nrrstore.progress import Progress


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
             device: str | torch.device | None = None, progress: Progress | None = None,
             task: str = "evaluate (images)", total: int | None = None) -> dict[str, Any]:
    """``{"top1", "n", "loss"}`` over ``batches`` of (inputs, labels); the model's train/eval mode is restored.

    ``device``: where the batches go (default: where the model's weights are). ``progress`` is told the images
    done after every batch (``task``, of ``total`` when known): a held-out pass can take a minute.
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else "cpu"
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    if progress is not None:
        progress(task, 0, total)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device, dtype=torch.long)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += y.numel()
            if progress is not None:
                progress(task, n, total)
    finally:
        model.train(was_training)
    if n == 0:
        raise NrrError(None, "evaluation got no batches (no held-out images)")
    return {"top1": correct / n, "n": n, "loss": loss_sum / n}
