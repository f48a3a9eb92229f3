"""Student training on a relabelled store of real images, evaluated on real held-out images; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nrrstore.errors import NrrError, ResumeMismatchError
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.train.student import train_student
from nrrstore_cli import train_cmd
from tests._builders import labelled_fmnist_store, make_app, write_fmnist_store
from tests._teacher import one_thread, teacher_path
from tests.conftest import FMNIST_SUBSET

VAL = FMNIST_SUBSET / "test"  # 1000 real held-out images, 100 per class
SMALL = {"arch_kwargs": {"width": 16}, "batch_size": 25}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """100 real images (10 per class) with 4 epochs of fp16 distances and soft labels."""
    return labelled_fmnist_store(tmp_path_factory.mktemp("student") / "s", 4)


@pytest.mark.parametrize("labels", ["dbr", "kd", "onehot"])
def test_students_learn_from_each_label_kind(store: Path, labels: str) -> None:
    with pytest.warns(UserWarning, match="cycle"):  # 8 epochs over the 4 stored ones
        r = train_student(store, VAL, epochs=8, labels=labels, lr=3e-3, cycle=True, **SMALL)
    assert r["val_images"] == 1000 and r["steps"] == 32 and len(r["history"]) == 8
    assert r["top1"] > 0.25, r["top1"]  # chance is 0.1; 0.35-0.45 is typical here
    assert r["history"][-1]["top1"] == r["top1"]
    assert r["history"][0]["lr"] > r["history"][-1]["lr"] >= 0  # cosine
    parts = set(r["history"][0]) - {"epoch", "lr", "seconds", "top1"}
    assert parts == {"dbr": {"loss", "sce", "dbr"}, "kd": {"loss", "kd"}, "onehot": {"loss", "sce"}}[labels]
    if labels == "dbr":
        assert r["history"][-1]["dbr"] < r["history"][0]["dbr"]  # the student approaches the teacher's distances


class _Stop(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(store: Path, tmp_path: Path) -> None:
    full = train_student(store, VAL, epochs=4, labels="dbr", checkpoint=tmp_path / "full.pt", **SMALL)

    def stop_in_epoch_3(task: str, done: int, total: int | None) -> None:
        if done == 2 * 4 + 2:  # two epochs of 4 steps done, two steps into the third
            raise _Stop

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Stop):
        train_student(store, VAL, epochs=4, labels="dbr", checkpoint=ckpt, progress=stop_in_epoch_3, **SMALL)
    assert torch.load(ckpt, weights_only=True)["epochs_done"] == 2
    resumed = train_student(store, VAL, epochs=4, labels="dbr", checkpoint=ckpt, resume=True, **SMALL)
    assert resumed["resumed_at_epoch"] == 2
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(full["history"]) == strip(resumed["history"]) and full["top1"] == resumed["top1"]
    with pytest.raises(ResumeMismatchError, match="lr"):
        train_student(store, VAL, epochs=4, labels="dbr", checkpoint=ckpt, resume=True, lr=2e-3, **SMALL)


@pytest.mark.parametrize("labels", ["dbr", "kd"])
def test_same_store_seed_and_options_give_the_same_top1(store: Path, labels: str) -> None:
    """Students are reproducible run to run on one machine at a fixed thread count (README, "Reproducible
    numbers"): the same store, seed and options give the same weights, losses and top-1, bit for bit."""
    runs = [train_student(store, VAL, epochs=3, labels=labels, lr=3e-3, seed=7, **SMALL) for _ in range(2)]
    assert runs[0]["top1"] == runs[1]["top1"] and runs[0]["val_loss"] == runs[1]["val_loss"]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    for a, b in zip(runs[0]["model"].state_dict().values(), runs[1]["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = train_student(store, VAL, epochs=3, labels=labels, lr=3e-3, seed=8, **SMALL)
    assert [h["loss"] for h in other["history"]] != [h["loss"] for h in runs[0]["history"]]  # the seed matters


def test_student_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(NrrError, match="beyond the 4 stored"):
        train_student(store, VAL, epochs=5, labels="dbr", **SMALL)
    with pytest.raises(NrrError, match="unknown label mode"):
        train_student(store, VAL, epochs=1, labels="soft", **SMALL)
    plain = tmp_path / "plain"
    write_fmnist_store(plain, per_class=1)
    with pytest.raises(NrrError, match="no DBR distances"):
        train_student(plain, VAL, epochs=1, labels="dbr", **SMALL)
    with pytest.raises(NrrError, match="no such file"):
        train_student(store, tmp_path / "nowhere", epochs=1, labels="dbr", **SMALL)


def test_cli_relabel_and_train_student(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write_fmnist_store(path, per_class=3, shard_size=50)
    runner, app = CliRunner(), make_app(train_cmd)
    args = ["relabel", str(path), "--teacher", str(teacher_path()), "--epochs", "2", "--group-size", "10",
            "--seed", "4", "--mix", "mixup", "--precision", "int8", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["views"] == 60 and out["precision"] == "int8" and out["augmentation"]["mix"] == "mixup"
    augmentation = Store(path).manifest.augmentation
    assert augmentation is not None and augmentation["seed"] == 4 and verify_store(path) == []
    res = runner.invoke(app, args)  # labels exist: one line on stderr, exit 1
    assert res.exit_code == 1 and "overwrite" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["train-student", str(path), "--val", str(VAL), "--epochs", "2", "--labels", "dbr",
                              "--checkpoint", str(tmp_path / "c.pt"), "--dbr-norm", "l1", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert 0 <= result["top1"] <= 1 and result["epochs"] == 2 and "model" not in result
    assert result["dbr_norm"] == "l1"  # the same option, values and meaning as evaluate's
    res = runner.invoke(app, ["train-student", str(path), "--val", str(VAL), "--epochs", "3"])
    assert res.exit_code == 1 and "beyond the 2 stored" in res.stderr
    shutil.rmtree(path)
