"""The ImageNet teacher recipe on real photos: random-resized crops, label smoothing, fp16 weights, and a
run stopped after an epoch that resumes to the same weights as one that never stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nrrstore.errors import NrrError
from nrrstore.models.checkpoint import load_teacher
from nrrstore.sources import prepare_imagefolder
from nrrstore.sources.batches import shard_batches
from nrrstore.train.teacher_crops import crops_for_epoch
from nrrstore.train.teacher_job import TeacherRecipe, resume_path, train_teacher
from nrrstore_cli.main import app
from tests.conftest import DATA

RECIPE = TeacherRecipe(crop_scale=(0.35, 1.0), crop_size=24, label_smoothing=0.1, channels_last=True)
ARGS: dict[str, Any] = {"arch": "resnet18", "epochs": 3, "batch_size": 40, "lr": 0.02, "flip": True}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAR-10 JPEGs (the committed 120-image slice), their bytes kept."""
    out = tmp_path_factory.mktemp("photos") / "shards"
    prepare_imagefolder(DATA / "cifar10-mini", out, image_format="source")
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class _Stop(Exception):
    pass


def test_a_stopped_run_resumes_to_the_same_weights(photos: Path, tmp_path: Path, single_thread: None) -> None:
    straight = train_teacher(photos, out=tmp_path / "a.pt", recipe=RECIPE, **ARGS)

    def stop_in_second_epoch(task: str, done: int, total: int | None) -> None:
        if done > 120:  # epoch 1 (120 images) has ended and left its state
            raise _Stop

    with pytest.raises(_Stop):
        train_teacher(photos, out=tmp_path / "b.pt", recipe=RECIPE, progress=stop_in_second_epoch, **ARGS)
    state = resume_path(tmp_path / "b.pt")
    assert state.is_file() and not (tmp_path / "b.pt").exists()
    # The state is plain tensors and data: it loads without unpickling code.
    assert torch.load(state, weights_only=True)["epoch"] == 1
    with pytest.raises(NrrError, match="pass --resume"):
        train_teacher(photos, out=tmp_path / "b.pt", recipe=RECIPE, **ARGS)
    with pytest.raises(NrrError, match=r"other settings \(lr\)"):
        train_teacher(photos, out=tmp_path / "b.pt", recipe=TeacherRecipe(**{**RECIPE.__dict__, "resume": True}),
                      **{**ARGS, "lr": 0.05})
    resumed = train_teacher(photos, out=tmp_path / "b.pt", recipe=TeacherRecipe(**{**RECIPE.__dict__, "resume": True}),
                            **ARGS)
    assert resumed["resumed_at_epoch"] == 1 and not state.exists()
    a, b = _weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["crop_scale"] == [0.35, 1.0] and straight["label_smoothing"] == 0.1


def test_random_resized_crops_are_seeded_per_image_and_sized(photos: Path) -> None:
    def views(batch: int, epoch: int = 0, scale: tuple[float, float] = (0.08, 1.0), side: int | None = 20):
        crops = crops_for_epoch(scale, 3, epoch, side)
        return torch.cat([x for x, _ in shard_batches(photos, batch, [0.5] * 3, [0.25] * 3, shuffle=False,
                                                      to_float=crops)])

    big = views(50)
    assert big.shape == (120, 3, 20, 20) and torch.equal(big, views(7))  # boxes do not depend on the batch size
    assert not torch.equal(big, views(50, epoch=1))
    # The whole image at full scale and the image side is the image itself.
    plain = torch.cat([x for x, _ in shard_batches(photos, 50, [0.5] * 3, [0.25] * 3, shuffle=False)])
    assert torch.allclose(views(50, scale=(1.0, 1.0), side=None), plain, atol=1e-4)
    with pytest.raises(NrrError, match="crop-scale"):
        crops_for_epoch((0.5, 0.2), 0, 0)


def test_half_weights_take_half_the_bytes_and_load_as_fp32(photos: Path, tmp_path: Path) -> None:
    args: dict[str, Any] = {**ARGS, "arch": "convnet3", "epochs": 1, "arch_kwargs": {"norm": "batch"}}
    train_teacher(photos, out=tmp_path / "f.pt", **args)
    train_teacher(photos, out=tmp_path / "h.pt", recipe=TeacherRecipe(half=True), **args)
    full, half = _weights(tmp_path / "f.pt"), _weights(tmp_path / "h.pt")
    assert {v.dtype for v in half.values() if v.is_floating_point()} == {torch.float16}
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "f.pt").stat().st_size
    assert all(torch.equal(half[k], full[k].half()) for k in full)
    teacher = load_teacher(tmp_path / "h.pt")
    assert {p.dtype for p in teacher.model.parameters()} == {torch.float32}
    x = torch.rand(2, 3, 32, 32)
    assert np.isfinite(teacher.model(teacher.normalize(x)).detach().numpy()).all()


@pytest.mark.parametrize(("args", "option"), [(["--crop-scale", "0.5"], "--crop-scale"),
                                              (["--crop-scale", "0.9,0.1"], "--crop-scale"),
                                              (["--crop-size", "32"], "--crop-size"),
                                              (["--label-smoothing", "1.5"], "--label-smoothing")])
def test_bad_recipe_options_get_one_line(photos: Path, tmp_path: Path, args: list[str], option: str) -> None:
    res = CliRunner().invoke(app, ["teacher", "train", "--in", str(photos), "--out", str(tmp_path / "t.pt"), *args])
    assert res.exit_code != 0 and option in res.output and "Traceback" not in res.output, res.output
    assert not any(tmp_path.iterdir())
