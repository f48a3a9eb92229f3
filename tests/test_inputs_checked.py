"""Inputs are checked before the work they would spoil: held-out data before a student's first epoch,
and no command writes inside its own input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrrstore.distill import distill, method_config
from nrrstore.models import load_teacher
from nrrstore.sources import prepare_imagefolder
from nrrstore_cli.main import app
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory) -> Path:
    """A CIFAR-10 store of real images (random preset, IPC 1) from the committed 12-per-class subset."""
    d = tmp_path_factory.mktemp("c10")
    prepare_imagefolder(ROOT / "data/cifar10-mini", d / "shards", image_format="source")
    teacher = load_teacher(ROOT / "data/teachers/convnet3bn-cifar10.pt")
    distill(d / "shards", teacher, d / "store", method_config("random", 1, 32))
    return d / "store"


@pytest.mark.parametrize("val", ["missing", "grey"])
def test_a_bad_val_is_refused_before_the_first_epoch(rgb_store: Path, tmp_path: Path, val: str) -> None:
    spec = tmp_path / "nope"
    if val == "grey":  # the same classes, one channel
        prepare_imagefolder(ROOT / "data/cifar10-mini", spec, mode="L", per_class=2)
    ckpt = tmp_path / "ckpt" / "student.pt"
    res = CliRunner().invoke(app, ["train-student", str(rgb_store), "--val", str(spec), "--labels", "onehot",
                                   "--epochs", "1000", "--checkpoint", str(ckpt)])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("nrrstore: ")
    assert ("channel" in line) if val == "grey" else (str(spec) in line), line
    assert not ckpt.exists()  # nothing that would block the corrected rerun


def test_import_rded_refuses_to_write_inside_its_input(tmp_path: Path) -> None:
    tree = tmp_path / "syn"
    for c, name in enumerate(("airplane", "automobile")):
        (tree / f"{c:05d}").mkdir(parents=True)
        data = (ROOT / "data/cifar10-mini" / name / "0000.jpg").read_bytes()
        (tree / f"{c:05d}" / f"class{c:05d}_id00000.jpg").write_bytes(data)
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    res = CliRunner().invoke(app, ["import", "rded", str(tree), "--out", str(tree / "store")])
    assert res.exit_code == 1 and "lies inside the input folder" in res.stderr, res.output
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before  # the input is untouched
    res = CliRunner().invoke(app, ["import", "rded", str(tree), "--out", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("cls", "meta", "ok"), [("3", '{"label": 3}', True), ("3", '{"label": 4}', False),
                                                  ("3", '{"cls": 5}', False), (None, '{"label": 2, "cls": 1}', False)])
def test_shard_labels_must_agree(tmp_path: Path, cls: str | None, meta: str, ok: bool) -> None:
    import io
    import tarfile

    from nrrstore.errors import NrrError
    from nrrstore.sources import iter_samples

    members = {"a.jpg": (ROOT / "data/cifar10-mini/cat/0000.jpg").read_bytes(), "a.json": meta.encode()}
    if cls is not None:
        members["a.cls"] = cls.encode()
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if ok:
        assert [s.label for s in iter_samples(shard)] == [3]
    else:
        with pytest.raises(NrrError, match="labels disagree") as err:
            list(iter_samples(shard))
        assert str(shard) in str(err.value)
