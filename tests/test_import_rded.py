"""import rded: RDED synthetic-image trees (real Fashion-MNIST images saved as RDED names them) -> stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nrrstore.convert.rded import import_rded, list_rded
from nrrstore.errors import NrrError
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.models import load_teacher
from nrrstore.sources.imagefolder import read_image_file
from tests._builders import make_app, write_rded
from tests._real import FMNIST_CLASSES
from tests._teacher import one_thread, teacher_path


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def test_import_keeps_class_numbers_keys_and_pixels(tmp_path: Path) -> None:
    written = write_rded(tmp_path / "syn", list(range(10)))
    (tmp_path / "syn/00003/notes.txt").write_text("not an image: skipped")
    summary = import_rded(tmp_path / "syn", tmp_path / "s")
    assert verify_store(tmp_path / "s") == []
    st = Store(tmp_path / "s")
    m = st.manifest
    assert summary["images"] == 20 and m.classes == [f"{c:05d}" for c in range(10)]
    keys = st.index.column("key").to_pylist()
    assert keys == [f"c{c:05d}_{i:06d}" for c in range(10) for i in range(2)]
    assert st.labels().tolist() == [c for c in range(10) for _ in range(2)]
    for k, ((c, i), path) in enumerate(sorted(written.items())):
        img = st.get(k)
        assert np.array_equal(img.pixels, read_image_file(path))  # the decoded JPEG, stored losslessly
        assert img.meta == {"source": f"{c:05d}/class{c:05d}_id{i:05d}.jpg"}
    assert m.source["format"] == "rded" and m.source["bytes"] == sum(p.stat().st_size for p in written.values())
    assert m.labels == {}  # RDED has no labels of its own


def test_class_numbers_not_ranks_and_class_names(tmp_path: Path) -> None:
    write_rded(tmp_path / "syn", [2, 5])
    names, images = list_rded(tmp_path / "syn")
    assert names == ["00000", "00001", "00002", "00003", "00004", "00005"] and {r.label for r in images} == {2, 5}
    (tmp_path / "names.txt").write_text("\n".join(FMNIST_CLASSES) + "\n")
    import_rded(tmp_path / "syn", tmp_path / "s", classes=tmp_path / "names.txt")
    st = Store(tmp_path / "s")
    assert st.manifest.classes == FMNIST_CLASSES and st.manifest.per_class == [0, 0, 2, 0, 0, 2, 0, 0, 0, 0]
    assert verify_store(tmp_path / "s") == []
    with pytest.raises(NrrError, match="beyond the 3 class names"):
        import_rded(tmp_path / "syn", tmp_path / "t", classes=["a", "b", "c"])


def test_import_then_relabel_with_a_teacher(tmp_path: Path) -> None:
    write_rded(tmp_path / "syn", list(range(10)))
    teacher = load_teacher(teacher_path())
    summary = import_rded(tmp_path / "syn", tmp_path / "s", teacher=teacher, epochs=2,
                          relabel_options={"batch_size": 64})
    assert summary["relabel"]["views"] == 40
    st = Store(tmp_path / "s")
    assert st.num_epochs == 2 and st.manifest.teacher["sha256"] == teacher.sha256
    assert st.manifest.normalization == {"mean": list(teacher.mean), "std": list(teacher.std)}
    assert verify_store(tmp_path / "s") == []
    with pytest.raises(NrrError, match="without a teacher"):
        import_rded(tmp_path / "syn", tmp_path / "t", epochs=2)


@pytest.mark.parametrize("bad,message", [
    ("00004/class00004_idx.jpg", "not an RDED image name"),
    ("00004/class00007_id00001.jpg", "names class 7 but lies in the folder of class 4"),
    ("fish/class00001_id00001.jpg", "not an RDED class folder"),
])
def test_bad_trees_are_refused(tmp_path: Path, bad: str, message: str) -> None:
    write_rded(tmp_path / "syn", [3, 4])
    path = tmp_path / "syn" / bad
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(path)
    with pytest.raises(NrrError) as err:
        import_rded(tmp_path / "syn", tmp_path / "s")
    assert message in err.value.message and str(path if "fish" not in bad else path.parent) in err.value.message
    assert not (tmp_path / "s").exists() and not (tmp_path / ".tmp-s").exists()


def test_cli_import_rded(tmp_path: Path) -> None:
    write_rded(tmp_path / "syn", [0, 1, 2])
    runner = CliRunner()
    res = runner.invoke(make_app(), ["import", "rded", str(tmp_path / "syn"), "--out", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["images"] == 6
    res = runner.invoke(make_app(), ["import", "rded", str(tmp_path / "syn"), "--out", str(tmp_path / "t"),
                                     "--epochs", "3"])
    assert res.exit_code == 1 and res.stderr.strip() == "nrrstore: --epochs needs --teacher (or run `nrrstore relabel` later)"
    res = runner.invoke(make_app(), ["import", "rded", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")])
    assert res.exit_code == 1 and "nowhere: no such folder" in res.stderr and res.stderr.count("\n") == 1
