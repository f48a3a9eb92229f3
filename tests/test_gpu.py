"""The CUDA paths, checked against the CPU on the same inputs (marked ``gpu``: skipped without CUDA; run by
benchmarks/gpu_check.sh on a machine that has a device)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import make_loader
from nrrstore.train.student import train_student
from tests._builders import write_fmnist_store
from tests.conftest import FMNIST_SUBSET

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda_teacher():
    """The test teacher loaded onto the device (the shared `teacher` fixture stays on the CPU)."""
    from nrrstore.models import load_teacher
    from tests._teacher import teacher_path

    return load_teacher(teacher_path(), "cuda")


def _distances(store: Path) -> np.ndarray:
    st = Store(store)
    d = st.read_distances(0)
    return np.stack([d.column("d_org").to_numpy(), d.column("d_aug").to_numpy()]).astype(np.float32)


def test_cuda_relabel_matches_the_cpu_within_fp16(tmp_path: Path, teacher, cuda_teacher) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    write_fmnist_store(cpu, per_class=4, shard_size=16)
    shutil.copytree(cpu, gpu)
    recipe = AugRecipe(size=28, group_size=20, seed=3)
    relabel(cpu, teacher, 2, recipe, batch_size=40, device="cpu")
    relabel(gpu, cuda_teacher, 2, recipe, batch_size=40, device="cuda")
    a, b = _distances(cpu), _distances(gpu)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-2 + 2e-3 * np.abs(a).max()
    assert verify_store(gpu) == []


def test_cuda_relabel_is_byte_identical_run_to_run(tmp_path: Path, cuda_teacher) -> None:
    one, two = tmp_path / "a", tmp_path / "b"
    write_fmnist_store(one, per_class=3, shard_size=16)
    shutil.copytree(one, two)
    for store in (one, two):
        relabel(store, cuda_teacher, 2, AugRecipe(size=28, group_size=10, seed=1), batch_size=30, device="cuda")
    files = sorted(p.relative_to(one) for p in (one / "labels").rglob("*") if p.is_file())
    assert files and all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_loader_puts_batches_on_the_device(tmp_path: Path, teacher) -> None:
    store = tmp_path / "s"
    write_fmnist_store(store, per_class=3, shard_size=16)
    relabel(store, teacher, 1, AugRecipe(size=28, group_size=10), batch_size=30)
    batch = next(iter(make_loader(Store(store), 0, 10, "dbr", device=torch.device("cuda"), num_epochs=1)))
    assert batch["images"].is_cuda and batch["images"].shape == (10, 1, 28, 28)


def test_cuda_distill_and_student(tmp_path: Path, cuda_teacher) -> None:
    out = tmp_path / "d"
    cfg = method_config("nrr", 1, cuda_teacher.image_size, nrr={"iterations": 5})
    distill(FMNIST_SUBSET / "train", cuda_teacher, out, cfg)
    assert verify_store(out) == []
    relabel(out, cuda_teacher, 2, AugRecipe(size=28, group_size=10), batch_size=10, device="cuda")
    r = train_student(out, FMNIST_SUBSET / "test", epochs=2, labels="dbr", batch_size=5, device="cuda",
                      arch_kwargs={"width": 16})
    assert 0.0 <= r["top1"] <= 1.0 and r["val_images"] == 1000
