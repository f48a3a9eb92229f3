"""Teacher training: real Fashion-MNIST learns well above chance; runs are deterministic."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nrrstore.errors import NrrError
from nrrstore.models import build_model
from nrrstore.train.accuracy import evaluate
from nrrstore.train.teacher import train_classifier

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core test machine two threads per process oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _read_idx(path: Path, count: int) -> np.ndarray:
    """First `count` items of a gzipped IDX file (big-endian header: magic with ndim, then dims)."""
    with gzip.open(path, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        assert magic >> 8 == 0x08, "unsigned-byte IDX expected"
        dims = struct.unpack(f">{magic & 0xFF}I", f.read(4 * (magic & 0xFF)))
        item = int(np.prod(dims[1:], dtype=np.int64))
        return np.frombuffer(f.read(count * item), np.uint8).reshape(count, *dims[1:])


def _fmnist(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(FMNIST / f"{split}-images-idx3-ubyte.gz", count)
    labels = _read_idx(FMNIST / f"{split}-labels-idx1-ubyte.gz", count)
    x = (torch.from_numpy(images.copy()).float().div(255).unsqueeze(1) - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def _batches(x: torch.Tensor, y: torch.Tensor, size: int):
    def per_epoch(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(x), size)]
    return per_epoch


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_convnet3_learns_fashion_mnist_subset() -> None:
    x_train, y_train = _fmnist("train", 2000)
    x_test, y_test = _fmnist("t10k", 1000)
    model = build_model("convnet3", 10, 1, 28, seed=0)
    steps: list[tuple[int, int | None]] = []
    record = train_classifier(model, _batches(x_train, y_train, 128), epochs=1, seed=0,
                              progress=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 16) for i in range(1, 17)]
    assert record["steps"] == 16 and record["warmup_steps"] == 1 and record["optimizer"] == "sgd"
    result = evaluate(model, [(x_test[i:i + 250], y_test[i:i + 250]) for i in range(0, 1000, 250)])
    assert result["n"] == 1000
    assert result["top1"] >= 0.5, result  # chance is 0.1; about 0.7 is typical here


def _synthetic(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_training_is_deterministic(optimizer: str) -> None:
    x, y = _synthetic()
    states = []
    for _ in range(2):
        model = build_model("convnet3", 4, 3, 16, seed=1, width=16)
        rec = train_classifier(model, _batches(x, y, 16), epochs=2, lr=1e-3, optimizer=optimizer, seed=5)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert rec["steps"] == 8 and len(rec["train_loss"]) == 2 and rec["epochs"] == 2


def test_schedule_without_known_length_and_evaluate_restores_mode() -> None:
    x, y = _synthetic()
    model = build_model("convnet3", 4, 3, 16, seed=1, width=16)
    seen: list[int | None] = []

    def generator(epoch: int):
        yield from _batches(x, y, 32)(epoch)

    rec = train_classifier(model, generator, epochs=1, progress=lambda done, total: seen.append(total))
    assert seen == [None, None] and rec["warmup_steps"] == 0
    assert model.training
    result = evaluate(model, [(x, y)])
    assert model.training
    with torch.no_grad():
        model.eval()
        expected = float((model(x).argmax(1) == y).float().mean())
    assert result["top1"] == pytest.approx(expected) and result["n"] == 64


def test_bad_inputs() -> None:
    x, y = _synthetic(8)
    model = build_model("convnet3", 4, 3, 16, width=8)
    with pytest.raises(NrrError, match="unknown optimizer 'rmsprop'"):
        train_classifier(model, _batches(x, y, 8), optimizer="rmsprop")
    with pytest.raises(NrrError, match="diverged"):
        train_classifier(model, _batches(torch.full_like(x, float("nan")), y, 8))
    with pytest.raises(NrrError, match="no training batches"):
        train_classifier(model, lambda epoch: [])
    with pytest.raises(NrrError, match="no batches"):
        evaluate(model, [])


def test_teacher_eval_reports_progress_per_batch() -> None:
    """`teacher eval` shows a bar (issue 17, U3): every batch moves it, to the image count of the shards."""
    from nrrstore.models import load_teacher
    from nrrstore.train.teacher_job import eval_teacher
    from tests._teacher import teacher_path
    from tests.conftest import FMNIST_SUBSET

    calls: list[tuple[str, int, int | None]] = []
    r = eval_teacher(load_teacher(teacher_path()), FMNIST_SUBSET / "test", batch_size=128,
                     progress=lambda task, done, total: calls.append((task, done, total)))
    assert r["images"] == 1000 and calls[0] == ("teacher eval (images)", 0, 1000)
    assert [c[1] for c in calls] == [0, *range(128, 1000, 128), 1000] and calls[-1][2] == 1000
    assert r == eval_teacher(load_teacher(teacher_path()), FMNIST_SUBSET / "test", batch_size=128)
