"""A small real teacher for tests: ConvNet-3 (width 32) trained briefly on embedded Fashion-MNIST.

Trained once per test process (a few seconds on 2 cores) and saved as an nrrstore teacher file, so
tests exercise the real checkpoint path (load_teacher, sha256) rather than an in-memory model.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import torch

from nrrstore.models import build_model, save_teacher
from nrrstore.train.teacher import train_classifier
from tests._real import FMNIST_CLASSES, fmnist

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics
WIDTH = 32


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine two threads per process oversubscribe badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@cache
def teacher_path(per_class: int = 60, epochs: int = 2) -> Path:
    """Path of a trained teacher checkpoint (cached for the whole process)."""
    samples = fmnist("train", per_class)
    x = torch.from_numpy(np.stack([s[1] for s in samples])).float().div(255).unsqueeze(1)
    x = (x - MEAN) / STD
    y = torch.tensor([s[2] for s in samples])
    model = build_model("convnet3", 10, 1, 28, seed=0, width=WIDTH)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [(x[order[i:i + 64]], y[order[i:i + 64]]) for i in range(0, len(x), 64)]

    with one_thread():
        train_classifier(model, batches, epochs=epochs, lr=0.05, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="nrr-teacher-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "teacher.pt"
    save_teacher(path, model, {"arch": "convnet3", "arch_kwargs": {"width": WIDTH}, "num_classes": 10,
                               "in_channels": 1, "image_size": 28, "classes": list(FMNIST_CLASSES),
                               "normalization": {"mean": [MEAN], "std": [STD]}})
    return path
