"""export --to imagefolder: class folders of the stored image bytes, distances joined to keys, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from nrrstore.convert import export as export_mod
from nrrstore.convert.export import export_imagefolder, folder_names
from nrrstore.convert.sre2l import convert_sre2l
from nrrstore.errors import NrrError
from nrrstore.format.reader import Store
from nrrstore.format.tables import EXPLICIT_COLUMNS
from nrrstore.sources.imagefolder import list_imagefolder
from nrrstore.train.loader import read_epoch_labels
from tests._builders import make_app, make_fixture
from tests._real import FMNIST_CLASSES
from tests._teacher import one_thread


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ex")
    with one_thread():
        fx = make_fixture(root / "fx", ["mixup", "mixup", "none"], per_class=2, batch=8, dtype=torch.float32)
        convert_sre2l(fx.labels_dir, fx.images_dir, root / "s", precision="int8", classes=FMNIST_CLASSES)
    return root / "s"


def test_export_writes_class_folders_and_joined_distances(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    summary = export_imagefolder(store, out, csv=True)
    st = Store(store)
    folders = folder_names(FMNIST_CLASSES)
    assert folders[0] == "T-shirt_top" and "/" not in "".join(folders)
    assert summary["images"] == 20 and not summary["sorted_folders_match_class_order"]
    assert (out / "classes.txt").read_text().splitlines() == folders
    # a plain ImageFolder reader sees every image once, with the store's bytes
    _, entries = list_imagefolder(out)
    assert len(entries) == 20
    keys = st.index.column("key").to_pylist()
    for i, key in enumerate(keys):
        path = out / folders[int(st.labels()[i])] / f"{key}.png"
        assert path.read_bytes() == st.read_bytes(i)
    t = pq.read_table(out / "distances.parquet")
    assert pq.ParquetFile(out / "distances.parquet").metadata.num_row_groups == 3
    assert t.num_rows == 3 * 20
    assert set(t.column_names) == {"epoch", "image", "key", "label", "path", "d_org", "d_aug", *EXPLICIT_COLUMNS}
    assert str(t.schema.field("d_org").type) == "float"
    for e in range(3):
        part = t.slice(e * 20, 20)
        assert set(part.column("epoch").to_pylist()) == {e}
        lab = read_epoch_labels(st, e)
        assert part.column("key").to_pylist() == keys
        np.testing.assert_array_equal(part.column("d_org").to_numpy(), lab.d_org)  # int8 codes decoded
        np.testing.assert_array_equal(part.column("partner").to_numpy(), st.read_distances(e).column("partner").to_numpy())
        assert all((out / p).is_file() for p in part.column("path").to_pylist())
    csv = pacsv.read_csv(out / "distances.csv")
    assert csv.num_rows == 60 and csv.column("key").to_pylist() == t.column("key").to_pylist()
    np.testing.assert_allclose(csv.column("d_aug").to_numpy(), t.column("d_aug").to_numpy(), rtol=1e-6)
    info = json.loads((out / "export.json").read_text())
    assert info["classes"][0] == {"index": 0, "name": "T-shirt/top", "folder": "T-shirt_top"}
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_numbered_folders_sort_in_class_order(store: Path, tmp_path: Path) -> None:
    summary = export_imagefolder(store, tmp_path / "exp", numbered=True)
    names, entries = list_imagefolder(tmp_path / "exp")
    assert summary["sorted_folders_match_class_order"] and names[0] == "00000-T-shirt_top"
    st = Store(store)
    assert sorted(e.label for e in entries) == sorted(st.labels().tolist())
    assert not (tmp_path / "exp/distances.csv").exists()
    assert folder_names(["a", "A", "..", ""]) == ["a", "A-00001", "class00002", "class00003"]


def test_export_is_atomic_and_refuses_foreign_folders(store: Path, tmp_path: Path, monkeypatch) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(NrrError, match="not empty"):
        export_imagefolder(store, foreign)
    with pytest.raises(NrrError, match="not an nrrstore export"):
        export_imagefolder(store, foreign, overwrite=True)
    assert os.listdir(foreign) == ["thesis.tex"]
    out = tmp_path / "exp"
    export_imagefolder(store, out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))

    def broken(*a, **k):
        raise NrrError("labels", "disk on fire")

    monkeypatch.setattr(export_mod, "read_epoch_labels", broken)
    with pytest.raises(NrrError, match="disk on fire"):
        export_imagefolder(store, out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "mine"]  # no temporary folder left
    monkeypatch.undo()
    export_imagefolder(store, out, overwrite=True, csv=True)
    assert (out / "distances.csv").is_file()


def test_cli_export(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(make_app(), ["export", str(store), "--to", "imagefolder", str(tmp_path / "exp"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["files"] == ["classes.txt", "distances.parquet", "export.json"]
    res = runner.invoke(make_app(), ["export", str(store), "--to", "coco", str(tmp_path / "x")])
    assert res.exit_code == 1 and "unknown export layout 'coco'" in res.stderr
    res = runner.invoke(make_app(), ["export", str(store), "--to", "imagefolder", str(tmp_path / "exp")])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "--overwrite" in res.stderr
