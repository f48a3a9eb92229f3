"""DBR relabeling on real Fashion-MNIST images with a real (briefly trained) teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from nrrstore.errors import NrrError, ResumeMismatchError
from nrrstore.format import quant
from nrrstore.format.atomic import file_sha256
from nrrstore.format.manifest import DIGEST_KEY, manifest_digest
from nrrstore.format.reader import Store
from nrrstore.format.tables import distance_schema
from nrrstore.format.verify import verify_store
from nrrstore.labels.relabel import WORK_DIR, default_recipe, relabel
from nrrstore.replay.recipe import AugRecipe
from tests._builders import write_fmnist_store
from tests._teacher import teacher_path

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")  # `teacher` comes from conftest.py


def _store(path: Path, per_class: int = 4) -> Path:
    write_fmnist_store(path, per_class=per_class, shard_size=16)
    return path


def _label_bytes(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted((store / "labels").rglob("*")) if p.is_file()}


def test_relabel_writes_a_sound_store(tmp_path: Path, teacher) -> None:
    store = _store(tmp_path / "s")
    recipe = AugRecipe(size=28, group_size=8, seed=3)
    summary = relabel(store, teacher, 5, recipe, full_softlabels=True, epochs_per_file=2, batch_size=16)
    assert verify_store(store) == []
    assert not (store / WORK_DIR).exists()
    m = Store(store).manifest
    assert m.augmentation == recipe.to_dict() and m.augmentation["group_size"] == 8
    assert m.teacher["sha256"] == file_sha256(teacher_path()) and m.teacher["arch"] == "convnet3"
    assert m.teacher["classes"] == m.classes and m.teacher["normalization"] == {"mean": [0.286], "std": [0.353]}
    assert m.normalization == m.teacher["normalization"]  # the student's normalization = the teacher's
    d = m.labels["distances"]
    assert (d["epochs"], d["precision"], d["mode"]) == (5, "fp16", "seeded")
    assert [(f["first_epoch"], f["last_epoch"]) for f in d["files"]] == [(0, 1), (2, 3), (4, 4)]
    assert summary["views"] == 200 and summary["chunks_computed"] == 3
    for part in d["files"]:
        pf = pq.ParquetFile(store / part["path"])
        assert pf.schema_arrow.equals(distance_schema("fp16"))
        assert pf.metadata.num_row_groups == part["last_epoch"] - part["first_epoch"] + 1
        for g in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(g)
            assert set(t.column("epoch").to_pylist()) == {part["first_epoch"] + g}
            assert t.column("image").to_pylist() == list(range(40))
            assert np.all(t.column("d_org").to_numpy() >= 0)
    assert m.labels["softlabels"]["path"].startswith("labels/softlabels-")  # versioned: see label_version
    soft = zarr.open_array(store / m.labels["softlabels"]["path"], mode="r")
    assert soft.shape == (5, 40, 10) and soft.dtype == np.float16 and soft.chunks == (1, 16, 10)
    assert np.allclose(np.asarray(soft[2]).astype(np.float32).sum(1), 1.0, atol=1e-2)
    assert m.labels["softlabels"]["shape"] == [5, 40, 10]
    # plain pyarrow reads one epoch and joins to keys through the index
    t = pq.read_table(store / d["files"][1]["path"], filters=[("epoch", "=", 3)])
    assert t.num_rows == 40


def test_default_recipe_and_overrides(tmp_path: Path, teacher) -> None:
    store = _store(tmp_path / "s", per_class=1)
    st = Store(store)
    assert default_recipe(st, teacher) == AugRecipe(size=28, seed=0)
    assert default_recipe(st, teacher, seed=5, mix="mixup", group_size=None) == AugRecipe(size=28, seed=5, mix="mixup")
    with pytest.raises(NrrError, match="contradicts"):
        relabel(store, teacher, 1, AugRecipe(size=28, seed=1), seed=2)
    relabel(store, teacher, 1, seed=7)
    assert Store(store).manifest.augmentation == AugRecipe(size=28, seed=7).to_dict()


def test_existing_labels_need_overwrite(tmp_path: Path, teacher) -> None:
    store = _store(tmp_path / "s", per_class=2)
    relabel(store, teacher, 2, AugRecipe(size=28, group_size=4), full_softlabels=True, batch_size=8)
    with pytest.raises(NrrError, match="overwrite"):
        relabel(store, teacher, 3, batch_size=8)
    # replacing: new distances, the old soft labels are gone from disk and manifest
    out = relabel(store, teacher, 3, precision="fp32", overwrite=True, batch_size=8)
    m = Store(store).manifest
    assert m.labels["distances"]["epochs"] == 3 and "softlabels" not in m.labels
    assert not list((store / "labels").glob("softlabels*"))
    assert m.augmentation is not None and m.augmentation["group_size"] == 4  # the store's recipe is kept by default
    assert out["files"] == ["labels/distances-e0000-e0002.parquet"]
    assert verify_store(store) == []


_KILLER = """
import os, signal, sys, torch
torch.set_num_threads(1)
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
store, teacher, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
def progress(task, done, total):
    if done >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
relabel(store, teacher, 6, AugRecipe(size=28, group_size=8, seed=1), full_softlabels=True,
        epochs_per_file=2, batch_size=16, codecs="dbr,topk:2,dbrc:1", progress=progress)
"""


def test_resume_after_sigkill_is_byte_identical(tmp_path: Path, teacher) -> None:
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    kw = {"full_softlabels": True, "epochs_per_file": 2, "batch_size": 16, "codecs": "dbr,topk:2,dbrc:1"}
    recipe = AugRecipe(size=28, group_size=8, seed=1)
    relabel(a, teacher, 6, recipe, **kw)
    # killed in the middle of epoch 3 (second file): the first file is done, the second is half written
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(b), str(teacher_path()), str(3 * 40 + 16)],
                          env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    work = b / WORK_DIR
    assert (work / "distances-e0000-e0001.parquet").is_file()
    assert not (work / "distances-e0002-e0003.parquet").exists()
    assert Store(b).manifest.labels == {}  # nothing installed yet
    # other arguments on the partial job are refused and name what differs
    with pytest.raises(ResumeMismatchError, match="precision"):
        relabel(b, teacher, 6, recipe, precision="fp32", **kw)
    with pytest.raises(ResumeMismatchError, match="recipe"):
        relabel(b, teacher, 6, AugRecipe(size=28, group_size=8, seed=2), **kw)
    with pytest.raises(ResumeMismatchError, match="codecs"):
        relabel(b, teacher, 6, recipe, **{**kw, "codecs": "dbr,topk:1"})
    out = relabel(b, teacher, 6, recipe, **kw)
    assert (out["chunks_resumed"], out["chunks_computed"]) == (1, 2)
    assert _label_bytes(a) == _label_bytes(b)  # the codec arrays included
    assert any("/topk2/" in k for k in _label_bytes(b))
    assert verify_store(b) == [] and not work.exists()
    ma, mb = (json.loads((s / "manifest.json").read_text()) for s in (a, b))
    for m in (ma, mb):
        m.pop("created"), m.pop("manifest_sha256")  # a digest of the values, `created` included
    assert ma == mb


def test_int8_distances_within_documented_bound(tmp_path: Path, teacher) -> None:
    a, b = _store(tmp_path / "a", per_class=3), _store(tmp_path / "b", per_class=3)
    recipe = AugRecipe(size=28, group_size=10)
    relabel(a, teacher, 2, recipe, precision="fp32", batch_size=10)
    out = relabel(b, teacher, 2, recipe, precision="int8", batch_size=10)
    qmax = Store(b).manifest.labels["distances"]["quant"]["max"]
    assert qmax == out["quant_max"] and out["clipped"] == 0
    for e in range(2):
        exact = Store(a).read_distances(e)
        codes = Store(b).read_distances(e)
        assert codes.schema.field("d_org").type == "uint8"
        for col in ("d_org", "d_aug"):
            d = exact.column(col).to_numpy().astype(np.float64)
            got = quant.decode(codes.column(col).to_numpy(), qmax).astype(np.float64)
            assert np.abs(np.log1p(got) - np.log1p(d)).max() <= quant.max_abs_log_error(qmax) + 1e-6


def test_quant_codes() -> None:
    qmax = 20.0
    d = np.concatenate([np.linspace(0, qmax, 200001), [0.0, 1e-9, qmax]])
    back = quant.decode(quant.encode(d, qmax), qmax).astype(np.float64)
    err = np.abs(np.log1p(back) - np.log1p(d))
    assert err.max() <= quant.max_abs_log_error(qmax) + 1e-6
    assert err.max() > 0.9 * quant.max_abs_log_error(qmax)  # the bound is tight, not loose
    assert quant.encode(np.array([0.0, 25.0]), qmax).tolist() == [0, 255]  # clips above max
    assert quant.decode(np.array([0, 255], np.uint8), qmax).tolist() == [0.0, pytest.approx(qmax, rel=1e-6)]
    assert quant.choose_max(np.array([0.3, 9.7])) == 13.0
    with pytest.raises(NrrError):
        quant.encode(np.array([np.nan]), qmax)
    with pytest.raises(NrrError):
        quant.decode(np.array([1.0]), qmax)
    with pytest.raises(NrrError):
        quant.encode(np.array([1.0]), 0.0)


def test_bad_arguments(tmp_path: Path, teacher) -> None:
    store = _store(tmp_path / "s", per_class=1)
    with pytest.raises(NrrError, match="precision"):
        relabel(store, teacher, 1, precision="bf16")
    with pytest.raises(NrrError, match="epochs"):
        relabel(store, teacher, 0)
    with pytest.raises(NrrError, match="px"):
        relabel(store, teacher, 1, AugRecipe(size=24))
    with pytest.raises(NrrError, match="no such teacher"):
        relabel(store, tmp_path / "missing.pt", 1)
    with pytest.raises(NrrError, match="store has 3"):
        s3 = tmp_path / "s3"
        from nrrstore.format.writer import StoreWriter
        from tests._real import fmnist

        with StoreWriter(s3, ["a", "b", "c"]) as w:
            for k, img, y in fmnist("train", 1)[:3]:
                w.add_image(k, img, y % 3)
            w.finalize()
        relabel(s3, teacher, 1)
    assert not (store / WORK_DIR).exists() and verify_store(store) == []


def test_memory_does_not_grow_with_epochs(tmp_path: Path, teacher) -> None:
    """Peak traced memory (numpy, Python) of 12 epochs is that of 2: nothing is kept per epoch.

    A leak of one epoch's views (80 x 28 x 28 float32 = 250 KB) per epoch would add ~2.5 MB here.
    """
    recipe = AugRecipe(size=28, group_size=16)
    relabel(_store(tmp_path / "warm", per_class=1), teacher, 1, recipe)  # one-time allocations
    peaks = []
    for epochs in (2, 12):
        store = _store(tmp_path / f"s{epochs}", per_class=8)
        tracemalloc.start()
        relabel(store, teacher, epochs, recipe, epochs_per_file=2, batch_size=32)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_workers_and_amp(tmp_path: Path, teacher) -> None:
    """Decoding workers change nothing; bf16 autocast is recorded and stays close to fp32."""
    recipe = AugRecipe(size=28, group_size=8, seed=2)
    ref = relabel(_store(tmp_path / "ref"), teacher, 3, recipe, epochs_per_file=2, batch_size=16, workers=0)
    two = relabel(_store(tmp_path / "two"), teacher, 3, recipe, epochs_per_file=2, batch_size=16, workers=2)
    assert two["workers"] == 2 and ref["amp"] == "fp32"
    assert _label_bytes(tmp_path / "ref") == _label_bytes(tmp_path / "two")
    bf = relabel(_store(tmp_path / "bf16"), teacher, 3, recipe, epochs_per_file=2, batch_size=16, amp="bf16")
    assert bf["amp"] == "bf16" and Store(tmp_path / "bf16").manifest.method["relabel"]["amp"] == "bf16"
    a = pq.read_table(tmp_path / "ref" / ref["files"][0]).column("d_org").to_numpy().astype(np.float32)
    b = pq.read_table(tmp_path / "bf16" / bf["files"][0]).column("d_org").to_numpy().astype(np.float32)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max())


def test_two_ranks_give_the_same_bytes(tmp_path: Path) -> None:
    """Under torchrun the ranks split the epoch chunks; the store equals a one-rank run byte for byte."""
    import socket

    recipe = AugRecipe(size=28, group_size=8, seed=9)
    kwargs = {"precision": "int8", "full_softlabels": True, "epochs_per_file": 2, "batch_size": 16}
    one = _store(tmp_path / "one")
    relabel(one, teacher_path(), 5, recipe, **kwargs)
    two = _store(tmp_path / "two")
    script = tmp_path / "rank.py"
    script.write_text(
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import torch; torch.set_num_threads(1)\n"
        "from nrrstore.labels.relabel import relabel\n"
        "from nrrstore.replay.recipe import AugRecipe\n"
        f"r = relabel({str(two)!r}, {str(teacher_path())!r}, 5, AugRecipe.from_dict({json.dumps(recipe.to_dict())}),"
        f" **{kwargs!r})\n"
        f"open({str(tmp_path)!r} + f'/summary-{{r[\"rank\"]}}.json', 'w').write(json.dumps(r))\n"
    )
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("summary-*.json"))]
    assert [(s["rank"], s["world_size"], s["chunks_computed"]) for s in summaries] == [(0, 2, 2), (1, 2, 1)]
    assert _label_bytes(two) == _label_bytes(one)
    assert verify_store(two) == []
    m1, m2 = (json.loads((s / "manifest.json").read_text()) for s in (one, two))
    for m in (m1, m2):
        m.pop("created")
        m.pop("manifest_sha256")  # a digest of the values, `created` included
    assert m1 == m2


def test_cli_bad_device_and_amp(tmp_path: Path, monkeypatch) -> None:
    """--device cuda without CUDA, --amp a device cannot do, unknown --amp: one line each, exit 1."""
    import torch
    from typer.testing import CliRunner

    from nrrstore_cli.main import app

    store = _store(tmp_path / "s", per_class=1)
    runner = CliRunner()

    def run(*extra: str):
        return runner.invoke(app, ["relabel", str(store), "--teacher", str(teacher_path()), "--epochs", "1", *extra])

    if not torch.cuda.is_available():
        res = run("--device", "cuda")
        assert res.exit_code == 1 and res.stderr.startswith("nrrstore: ") and len(res.stderr.strip().splitlines()) == 1
        assert "CUDA is not available" in res.stderr
    res = run("--amp", "fp8")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--amp: 'fp8' is not one of 'bf16', 'fp16', 'fp32'" in res.stderr
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", lambda kind: False)
    res = run("--amp", "bf16")
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "--amp bf16 on device 'cpu': torch has no autocast for this device" in res.stderr
    assert not (store / WORK_DIR).exists() and "distances" not in Store(store).manifest.labels


def test_unreplayable_recipe_version_is_refused(tmp_path: Path, teacher) -> None:
    """A store whose recipe this nrrstore cannot replay: refused, naming both versions (library and CLI)."""
    from typer.testing import CliRunner

    from nrrstore.train.loader import make_loader
    from nrrstore_cli.main import app

    store = _store(tmp_path / "s", per_class=1)
    relabel(store, teacher, 1, AugRecipe(size=28, group_size=4))
    path = store / "manifest.json"
    doc = json.loads(path.read_text())
    doc["augmentation"]["version"] = 7
    doc[DIGEST_KEY] = manifest_digest(doc)  # a consistent manifest (format 1.1), just a newer recipe
    path.write_text(json.dumps(doc))
    with pytest.raises(NrrError, match=r"version 7 cannot be replayed .* versions 1 and 2"):
        make_loader(store)
    res = CliRunner().invoke(app, ["train-student", str(store), "--val", str(ROOT / "data/fashion-mnist/test"),
                                   "--epochs", "1"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "version 7 cannot be replayed" in res.stderr and "manifest.json" in res.stderr


def test_a_killed_writes_temporaries_are_removed_before_resuming(tmp_path: Path) -> None:
    """zarr writes a chunk to KEY.UUID.partial, then renames it: a kill inside the write (relabel writes on a
    thread beside the teacher) leaves the temporary, which would be installed with the labels."""
    from nrrstore.format.workstate import remove_interrupted_writes

    chunk = tmp_path / "softlabels.zarr" / "c" / "2" / "0"
    chunk.mkdir(parents=True)
    (chunk / "0").write_bytes(b"done")
    (chunk / "0.10414d1a79004826b6510a4b84125107.partial").write_bytes(b"half")
    assert remove_interrupted_writes(tmp_path) == 1
    assert sorted(p.name for p in chunk.iterdir()) == ["0"]
    assert remove_interrupted_writes(tmp_path / "absent") == 0
