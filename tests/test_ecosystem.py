"""A store is readable by the ecosystem's own readers, no nrrstore involved: webdataset, pyarrow, duckdb,
zarr and Hugging Face ``datasets`` (README shows each in two lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nrrstore.format import Store
from nrrstore.labels.relabel import relabel
from tests._builders import write_fmnist_store
from tests._teacher import teacher_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 real Fashion-MNIST images in 2 shards, 3 epochs of DBR distances and full soft labels."""
    from tests._teacher import one_thread

    root = tmp_path_factory.mktemp("eco") / "st"
    write_fmnist_store(root, per_class=3)
    with one_thread():
        relabel(root, teacher_path(), 3, full_softlabels=True)
    return root


def test_plain_webdataset(store: Path) -> None:
    import webdataset as wds

    st = Store(store)
    samples = list(wds.WebDataset([str(store / s) for s in st.manifest.shards], shardshuffle=False).decode("l8"))
    assert [s["__key__"] for s in samples] == st.index.column("key").to_pylist()
    assert [int(s["cls"]) for s in samples] == st.labels().tolist()
    assert np.array_equal(samples[7]["png"], st.get(7).pixels)


def test_pyarrow_reads_one_epoch_as_one_row_group(store: Path) -> None:
    import pyarrow.parquet as pq

    st = Store(store)
    (part,) = st.distance_files()
    table = pq.ParquetFile(store / part["path"]).read_row_group(1)
    assert set(table.column("epoch").to_pylist()) == {1}
    assert table.equals(st.read_distances(1))
    assert pq.read_table(store / "index.parquet").column("key").to_pylist() == st.index.column("key").to_pylist()


def test_duckdb_joins_an_epoch_to_the_index(store: Path) -> None:
    import duckdb

    rel = duckdb.sql(f"""
        SELECT i.key, i.label, d.d_org, d.d_aug
        FROM '{store}/index.parquet' AS i JOIN '{store}/labels/distances-*.parquet' AS d USING (image)
        WHERE d.epoch = 2 ORDER BY i.image""")
    assert rel is not None  # a SELECT gives a relation
    rows = rel.fetchall()
    st = Store(store)
    want = st.read_distances(2)
    assert [r[0] for r in rows] == st.index.column("key").to_pylist()
    assert [r[1] for r in rows] == st.labels().tolist()
    assert np.array_equal(np.array([r[2] for r in rows], np.float32), want.column("d_org").to_numpy().astype(np.float32))
    assert np.array_equal(np.array([r[3] for r in rows], np.float32), want.column("d_aug").to_numpy().astype(np.float32))


def test_zarr_reads_the_soft_labels(store: Path) -> None:
    import zarr

    from nrrstore.format.softlabels import SoftLabels

    section = Store(store).manifest.labels["softlabels"]
    arr = zarr.open_array(store / section["path"], mode="r")  # the manifest says where (relabel versions it)
    assert arr.shape == (3, 30, 10) and arr.dtype == np.float16
    assert np.array_equal(np.asarray(arr[1, 4:9], np.float32), SoftLabels(store, section).read(1, 4, 9))
    assert np.allclose(np.asarray(arr[0], np.float32).sum(axis=1), 1.0, atol=1e-2)  # probabilities


def test_hugging_face_datasets_load_the_shards(store: Path) -> None:
    from datasets import load_dataset

    ds = load_dataset("webdataset", data_files={"train": str(store / "images/shard-*.tar")}, split="train")
    st = Store(store)
    assert ds.num_rows == 30
    assert ds["__key__"] == st.index.column("key").to_pylist()
    assert [int(c) for c in ds["cls"]] == st.labels().tolist()
    assert np.array_equal(np.asarray(ds[3]["png"]), st.get(3).pixels)
