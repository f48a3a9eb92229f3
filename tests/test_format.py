"""Store writer/reader/verify on real images: round trip, determinism, corruption, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from nrrstore.errors import FormatVersionError, NrrError
from nrrstore.format.manifest import DIGEST_KEY, FORMAT_VERSION, load_manifest, manifest_digest
from nrrstore.format.reader import Store
from nrrstore.format.tables import distance_schema
from nrrstore.format.verify import verify_store
from nrrstore.format.writer import StoreWriter
from tests._builders import write_fmnist_store
from tests._real import FMNIST_CLASSES, fmnist, photo_crops


def test_round_trip_fmnist(tmp_path: Path) -> None:
    samples = write_fmnist_store(tmp_path / "s")
    store = Store(tmp_path / "s")
    assert store.num_images == len(samples) == 60
    assert store.manifest.per_class == [6] * 10
    assert len(store.manifest.shards) == 4
    got = list(store.iter_images())
    for (key, img, label), g in zip(samples, got, strict=True):
        assert (g.key, g.label, g.meta) == (key, label, {"source": key})
        assert np.array_equal(g.pixels, img)
    # Random access by key and by index agrees with the sequential read.
    r = store.get(samples[37][0])
    assert r.index == 37 and np.array_equal(r.pixels, samples[37][1])
    assert np.array_equal(store.get(59).pixels, samples[59][1])
    assert verify_store(tmp_path / "s") == []


def test_plain_webdataset_reads_store(tmp_path: Path) -> None:
    import webdataset as wds

    samples = write_fmnist_store(tmp_path / "s")
    store = Store(tmp_path / "s")
    urls = [str(tmp_path / "s" / s) for s in store.manifest.shards]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("l8").to_tuple("__key__", "png", "cls", "json")
    got = list(ds)
    assert [g[0] for g in got] == [s[0] for s in samples]
    for (key, img, label), (_, pix, cls, meta) in zip(samples, got, strict=True):
        assert np.array_equal(np.asarray(pix), img) and int(cls) == label and meta["source"] == key


def test_rgb_photos_all_encodings(tmp_path: Path) -> None:
    crops = photo_crops(12)
    for fmt in ("png", "webp", "jpg"):
        with StoreWriter(tmp_path / fmt, ["astronaut", "coffee", "chelsea"], image_format=fmt, shard_size=5) as w:
            for i, (img, c) in enumerate(crops):
                w.add_image(f"img_{i}", img, c)
            w.finalize()
        store = Store(tmp_path / fmt)
        assert store.manifest.image.channels == 3 and store.manifest.image.encoding == fmt
        for (img, _), g in zip(crops, store.iter_images(), strict=True):
            if fmt == "jpg":
                assert np.abs(g.pixels.astype(int) - img).mean() < 6
            else:
                assert np.array_equal(g.pixels, img)
        assert verify_store(tmp_path / fmt) == []


def test_deterministic_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_fmnist_store(tmp_path / "a")
    write_fmnist_store(tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_only_created_differs_without_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_fmnist_store(tmp_path / "a", per_class=2)
    write_fmnist_store(tmp_path / "b", per_class=2)
    ma = json.loads((tmp_path / "a/manifest.json").read_text())
    mb = json.loads((tmp_path / "b/manifest.json").read_text())
    # the digest covers `created` too, so it differs when the two writes straddle a second: b with a's time
    # must give a's digest, and everything else must be equal
    assert manifest_digest({**mb, "created": ma["created"]}) == ma[DIGEST_KEY]
    for m in (ma, mb):
        m.pop("created"), m.pop(DIGEST_KEY)
    assert ma == mb


@pytest.mark.parametrize("key,why", [("a.b", "dot"), ("a/b", "path separator"), ("", "empty"), ("a b", "letters")])
def test_bad_keys(tmp_path: Path, key: str, why: str) -> None:
    img = photo_crops(1)[0][0]
    with StoreWriter(tmp_path / "s", ["x"]) as w, pytest.raises(NrrError, match=why):
        w.add_image(key, img, 0)
    assert not (tmp_path / "s").exists()


def test_duplicate_key_label_range_and_shape(tmp_path: Path) -> None:
    (a, _), (b, _) = photo_crops(2)
    with StoreWriter(tmp_path / "s", ["x", "y"]) as w:
        w.add_image("k", a, 0)
        with pytest.raises(NrrError, match="duplicate key"):
            w.add_image("k", b, 1)
        with pytest.raises(NrrError, match="outside the 2 classes"):
            w.add_image("k2", b, 2)
        with pytest.raises(NrrError, match="differs"):
            w.add_image("k3", b[:16], 1)
    assert not (tmp_path / "s").exists() and not (tmp_path / ".tmp-s").exists()


def test_output_folder_with_other_content_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(NrrError, match="not empty"):
        StoreWriter(tmp_path / "out", ["x"])
    with pytest.raises(NrrError, match="not an nrrstore store"):
        StoreWriter(tmp_path / "out", ["x"], overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_store(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s", per_class=1)
    write_fmnist_store(tmp_path / "s", per_class=2, overwrite=True)
    assert Store(tmp_path / "s").num_images == 20
    assert verify_store(tmp_path / "s") == []


def test_unknown_major_version_refused(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s", per_class=1)
    m = json.loads((tmp_path / "s/manifest.json").read_text())
    m["format_version"] = "2.0"
    (tmp_path / "s/manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError) as err:
        load_manifest(tmp_path / "s")
    assert "2.0" in str(err.value) and FORMAT_VERSION in str(err.value) and "manifest.json" in str(err.value)
    m["format_version"] = "1.7"  # a newer minor version of our major is readable
    m["manifest_sha256"] = manifest_digest(m)  # as a 1.7 writer would
    (tmp_path / "s/manifest.json").write_text(json.dumps(m))
    assert Store(tmp_path / "s").num_images == 10


def test_flipped_byte_is_found(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s")
    shard = tmp_path / "s/images/shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify_store(tmp_path / "s")
    assert problems == [f"{shard}: sha256 mismatch (file changed or corrupt)"]


def test_missing_truncated_and_unlisted_files(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s")
    (tmp_path / "s/images/shard-000001.tar").unlink()
    idx = tmp_path / "s/index.parquet"
    idx.write_bytes(idx.read_bytes()[:100])
    (tmp_path / "s/extra.bin").write_bytes(b"x")
    problems = verify_store(tmp_path / "s")
    assert any("shard-000001.tar: missing" in p for p in problems)
    assert any("index.parquet: size" in p for p in problems)
    assert any("extra.bin: not listed" in p for p in problems)


def test_missing_manifest_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(NrrError, match="no such store"):
        Store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NrrError, match="missing manifest"):
        Store(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/manifest.json").write_text("{not json")
    with pytest.raises(NrrError, match="not valid JSON"):
        Store(tmp_path / "bad")


def test_distances_one_row_group_per_epoch(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    samples = list(fmnist("train", 2))
    n = len(samples)
    with StoreWriter(tmp_path / "s", FMNIST_CLASSES) as w:
        for key, img, label in samples:
            w.add_image(key, img, label)
        path = w.file_path("labels/distances-e0000-e0002.parquet", "distances")
        schema = distance_schema("fp16")
        with pq.ParquetWriter(path, schema, compression="zstd", store_schema=False) as pw:
            for e in range(3):
                t = pa.table({"epoch": np.full(n, e, np.int32), "image": np.arange(n, dtype=np.int32),
                              "d_org": np.full(n, e + 0.5, np.float16), "d_aug": np.full(n, e + 1.5, np.float16)}, schema=schema)
                pw.write_table(t)
        w.set_meta("labels", {"distances": {"files": [{"path": "labels/distances-e0000-e0002.parquet", "first_epoch": 0, "last_epoch": 2}],
                                            "epochs": 3, "precision": "fp16", "mode": "seeded"}})
        w.finalize()
    store = Store(tmp_path / "s")
    t = store.read_distances(1)
    assert t.num_rows == n and set(t.column("epoch").to_pylist()) == {1}
    assert t.column("d_aug").to_numpy()[0] == np.float16(2.5)
    with pytest.raises(NrrError, match="no distances stored for epoch 3"):
        store.read_distances(3)
    assert verify_store(tmp_path / "s") == []


KILL_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
from nrrstore.format.writer import StoreWriter
from tests._real import fmnist, FMNIST_CLASSES
w = StoreWriter({out!r}, FMNIST_CLASSES, shard_size=8)
for i, (key, img, label) in enumerate(fmnist("train", 5)):
    w.add_image(key, img, label)
    if i == 30:
        os.kill(os.getpid(), signal.SIGKILL)
w.finalize()
"""


def test_killed_write_leaves_no_store(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    out = str(tmp_path / "s")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(root=root, out=out)], cwd=root, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(out)
    # The next write cleans the leftovers and succeeds.
    write_fmnist_store(tmp_path / "s", per_class=1)
    assert not (tmp_path / ".tmp-s").exists() and verify_store(out) == []
