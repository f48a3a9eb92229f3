"""The storage layer's component modules on their own: distance tables, labels in a store, staged folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nrrstore.errors import NrrError
from nrrstore.format import Store, StoreWriter, quant, verify_store
from nrrstore.format.distances import DistanceFile, distances_section, epoch_chunks, read_epoch_labels, split_bytes
from nrrstore.format.layout import distance_path, is_store
from nrrstore.format.outputs import StagedFolder
from nrrstore.format.tables import EXPLICIT_COLUMNS
from nrrstore.format.update import update_store

N = 6


def _store(path) -> Store:
    rng = np.random.default_rng(0)
    with StoreWriter(path, ["a", "b"], shard_size=4) as w:
        for i in range(N):
            w.add_image(f"k{i}", rng.integers(0, 256, (8, 8), dtype=np.uint8), i % 2)
        w.finalize()
    return Store(path)


def _views(epoch: int) -> dict[str, np.ndarray]:
    cols = {name: np.zeros(N, dtype) for name, dtype in EXPLICIT_COLUMNS.items()}
    cols["crop_h"][:] = cols["crop_w"][:] = 8
    cols["crop_i"][:] = epoch
    cols["crop_h"][:] -= epoch
    cols["partner"][:] = (np.arange(N) + 1) % N
    cols["lam"][:] = 0.75
    return cols


@pytest.mark.parametrize(("precision", "mode"), [("fp16", "seeded"), ("fp32", "explicit"), ("int8", "explicit")])
def test_distances_written_and_read_back_through_the_store(tmp_path, precision: str, mode: str) -> None:
    st = _store(tmp_path / "s")
    d = {e: (np.linspace(0.01, 3.0 + 0.2 * e, N).astype(np.float32), np.linspace(4.0, 0.2, N).astype(np.float32))
         for e in range(5)}
    chunks = epoch_chunks(5, 2)
    assert chunks == [(0, 1), (2, 3), (4, 4)]
    qmax = None
    for a, b in chunks:
        with DistanceFile(st.path / distance_path(a, b), N, precision, explicit=mode == "explicit",
                          quant_max=qmax) as table:
            for e in range(a, b + 1):
                table.write_epoch(e, *d[e], _views(e) if mode == "explicit" else None)
        qmax = table.quant_max  # int8: chosen from epoch 0, kept for the later files
        assert table.clipped == 0
    section = distances_section(chunks, precision, mode, qmax)
    update_store(st.path, kinds={f["path"]: "distances" for f in section["files"]}, sections={"labels": {"distances": section}})
    st = Store(st.path)
    assert verify_store(st.path) == []
    for e in range(5):
        lab = read_epoch_labels(st, e)
        assert lab.d_org is not None
        tol = {"fp32": 0.0, "fp16": 2e-3}.get(precision)
        if tol is None:
            assert qmax is not None
            bound = quant.max_abs_log_error(qmax)
            assert np.abs(np.log1p(lab.d_org) - np.log1p(d[e][0])).max() <= bound + 1e-6
        else:
            np.testing.assert_allclose(lab.d_org, d[e][0], rtol=tol)
        assert lab.d_org.dtype == np.float32
        if mode == "explicit":
            assert lab.views is not None and lab.views["crop_i"].tolist() == [e] * N
            assert {k: v.dtype for k, v in lab.views.items()} == EXPLICIT_COLUMNS
        else:
            assert lab.views is None
    value, fixed = split_bytes(st)
    assert value > 0 and fixed > 0


def test_a_distance_file_refuses_wrong_rows_and_leaves_nothing(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    with pytest.raises(NrrError, match="3 distances for 6 images"), DistanceFile(path, N) as table:
        table.write_epoch(0, np.zeros(3), np.zeros(3))
    with pytest.raises(NrrError, match="view columns"), DistanceFile(path, N, explicit=True) as table:
        table.write_epoch(0, np.zeros(N), np.zeros(N))
    assert list(tmp_path.iterdir()) == []


def test_a_rewrite_deletes_the_files_it_stops_listing(tmp_path) -> None:
    st = _store(tmp_path / "s")
    with DistanceFile(st.path / distance_path(0, 0), N) as table:
        table.write_epoch(0, np.ones(N), np.ones(N))
    section = distances_section([(0, 0)], "fp16", "seeded")
    update_store(st.path, kinds={distance_path(0, 0): "distances"}, sections={"labels": {"distances": section}})
    with DistanceFile(st.path / distance_path(0, 1), N) as table:
        for e in (0, 1):
            table.write_epoch(e, np.ones(N), np.ones(N))
    update_store(st.path, kinds={distance_path(0, 1): "distances"}, remove_prefixes=(distance_path(0, 0),),
                 sections={"labels": {"distances": distances_section([(0, 1)], "fp16", "seeded")}})
    assert isinstance(st.path, Path)
    assert not (st.path / distance_path(0, 0)).exists() and verify_store(st.path) == []


def test_staged_folder_refuses_replaces_and_cleans_up(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(NrrError, match="not empty"):
        StagedFolder(out, False, marker="done.txt", kind="a test output")
    with pytest.raises(NrrError, match="not a test output"):
        StagedFolder(out, True, marker="done.txt", kind="a test output")
    (out / "done.txt").write_text("ours")
    with pytest.raises(RuntimeError), StagedFolder(out, True, marker="done.txt", kind="a test output") as stage:
        (stage.path / "half").write_text("x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    assert (out / "thesis.tex").exists()  # the old output is intact
    with StagedFolder(out, True, marker="done.txt", kind="a test output") as stage:
        (stage.path / "done.txt").write_text("new")
        stage.commit()
    assert sorted(p.name for p in out.iterdir()) == ["done.txt"] and not is_store(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
