"""Tampering and mismatches: the manifest digest, labels out of range, and the replay check."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from nrrstore.errors import NrrError
from nrrstore.format.atomic import file_sha256
from nrrstore.format.manifest import DIGEST_KEY, FORMAT_VERSION, manifest_digest
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.labels.relabel import relabel
from nrrstore.labels.replay_check import replay_check
from nrrstore.models import load_teacher, save_teacher
from nrrstore.replay.recipe import AugRecipe
from nrrstore_cli.main import app
from tests._builders import write_fmnist_store
from tests._teacher import teacher_path

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas/manifest.schema.json").read_text())
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def _write_manifest(store: Path, doc: dict, *, redigest: bool) -> None:
    if redigest:
        doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, teacher) -> Path:
    """A small store with 3 epochs of fp16 DBR distances."""
    store = tmp_path_factory.mktemp("tamper") / "s"
    write_fmnist_store(store, per_class=3)
    relabel(store, teacher, 3, AugRecipe(size=28, group_size=10, seed=5), batch_size=30)
    return store


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_carries_a_digest_of_its_values(labelled: Path) -> None:
    doc = _manifest(labelled)
    assert doc["format_version"] == FORMAT_VERSION == "1.2"
    assert list(doc)[-1] == DIGEST_KEY and doc[DIGEST_KEY] == manifest_digest(doc)
    jsonschema.validate(doc, SCHEMA)


@pytest.mark.parametrize("edit", ["seed", "teacher_sha256", "eps"])
def test_edited_manifest_values_are_caught(labelled: Path, tmp_path: Path, edit: str) -> None:
    store = _copy(labelled, tmp_path / "s")
    doc = _manifest(store)
    if edit == "seed":
        doc["augmentation"]["seed"] += 1
    elif edit == "teacher_sha256":
        doc["teacher"]["sha256"] = "0" * 64
    else:
        doc["method"]["nrr"] = {"eps": 0.3}
    _write_manifest(store, doc, redigest=False)
    with pytest.raises(NrrError, match="changed after the store was written"):
        Store(store)
    problems = verify_store(store)
    assert len(problems) == 1 and "manifest.json" in problems[0] and DIGEST_KEY in problems[0]
    res = runner.invoke(app, ["verify", str(store)])
    assert res.exit_code == 1 and "manifest_sha256" in res.stdout
    res = runner.invoke(app, ["train-student", str(store), "--val", str(store), "--epochs", "1"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1 and "manifest.json" in res.stderr


def test_format_1_0_stores_stay_readable_and_verifiable(labelled: Path, tmp_path: Path, teacher) -> None:
    store = _copy(labelled, tmp_path / "old")
    doc = _manifest(store)
    del doc[DIGEST_KEY]
    doc["format_version"] = "1.0"
    doc["labels"].pop("codecs", None)  # 1.2's section: a 1.0 manifest holding it is refused as a downgrade
    _write_manifest(store, doc, redigest=False)
    jsonschema.validate(doc, SCHEMA)  # the schema still describes 1.0 manifests
    assert Store(store).manifest.format_version == "1.0"
    assert verify_store(store) == []
    res = runner.invoke(app, ["verify", str(store)])
    assert res.exit_code == 0 and "format 1.0" in res.stdout
    relabel(store, teacher, 2, overwrite=True, batch_size=30)  # an update rewrites it in the current version
    assert _manifest(store)["format_version"] == FORMAT_VERSION and verify_store(store) == []


def test_schema_requires_the_digest_from_1_1(labelled: Path) -> None:
    doc = _manifest(labelled)
    del doc[DIGEST_KEY]
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)


def test_label_out_of_range_is_refused_by_readers(labelled: Path, tmp_path: Path) -> None:
    """An index whose label says 42, with checksums and digest made to match (as a careless tool would)."""
    store = _copy(labelled, tmp_path / "s")
    index = pq.read_table(store / "index.parquet")
    labels = index.column("label").to_pylist()
    labels[4] = 42
    index = index.set_column(index.schema.get_field_index("label"), index.schema.field("label"),
                             pa.array(labels, pa.int32()))
    pq.write_table(index, store / "index.parquet")
    doc = _manifest(store)
    entry = next(f for f in doc["files"] if f["path"] == "index.parquet")
    entry["bytes"], entry["sha256"] = (store / "index.parquet").stat().st_size, file_sha256(store / "index.parquet")
    _write_manifest(store, doc, redigest=True)
    key = index.column("key")[4].as_py()
    with pytest.raises(NrrError, match=f"key '{key}': label 42 outside the store's 10 classes"):
        Store(store).labels()
    assert any("label 42" in p for p in verify_store(store))
    res = runner.invoke(app, ["train-student", str(store), "--val", "data/fashion-mnist/test", "--epochs", "1"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "index.parquet" in res.stderr and key in res.stderr


def _other_teacher(path: Path) -> Path:
    """The test teacher with its weights nudged: same architecture and classes, other outputs."""
    t = load_teacher(teacher_path())
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(torch.randn_like(p) * 0.3, alpha=1.0)
    save_teacher(path, t.model, {"arch": t.arch, "arch_kwargs": t.arch_kwargs, "num_classes": t.num_classes,
                                 "in_channels": t.in_channels, "image_size": t.image_size, "classes": t.classes,
                                 "normalization": {"mean": list(t.mean), "std": list(t.std)}})
    return path


def test_replay_agrees_with_the_right_teacher(labelled: Path, teacher) -> None:
    report = replay_check(labelled, teacher, sample=40)
    assert report.problem is None and report.beyond_tolerance == 0 and report.views == 42
    assert report.epochs == [0, 1, 2] and report.teacher_sha256_matches is True
    res = runner.invoke(app, ["verify", str(labelled), "--teacher", str(teacher_path()), "--sample", "30"])
    assert res.exit_code == 0 and "replayed views agree" in res.stdout


def test_replay_catches_a_wrong_teacher_and_a_wrong_seed(labelled: Path, tmp_path: Path, teacher) -> None:
    other = _other_teacher(tmp_path / "other.pt")
    res = runner.invoke(app, ["verify", str(labelled), "--teacher", str(other), "--sample", "30"])
    assert res.exit_code == 1 and "beyond the fp16 tolerance" in res.stdout and "different teacher" in res.stdout
    # the seed edited *and* the digest recomputed: only replaying the views can tell
    store = _copy(labelled, tmp_path / "s")
    doc = _manifest(store)
    doc["augmentation"]["seed"] += 1
    _write_manifest(store, doc, redigest=True)
    assert verify_store(store) == []
    report = replay_check(store, teacher, sample=30)
    assert report.problem is not None and report.beyond_tolerance > 10 and report.mean_gap > 0.1


def test_replay_int8_within_a_code_step(tmp_path: Path, teacher) -> None:
    store = tmp_path / "s"
    write_fmnist_store(store, per_class=2)
    relabel(store, teacher, 2, precision="int8", batch_size=20)
    assert replay_check(store, teacher, sample=20).problem is None


def test_replay_runs_the_teacher_under_the_recorded_autocast(tmp_path: Path, teacher, monkeypatch) -> None:
    """bf16-labelled stores replay under bf16; a device without that autocast replays in fp32 within the
    autocast allowance (bf16 moves distances by ~0.01 nats, beyond the plain fp16 tolerance)."""
    from nrrstore.labels import replay_check as replay

    store = tmp_path / "s"
    write_fmnist_store(store, per_class=3)
    relabel(store, teacher, 2, AugRecipe(size=28, group_size=10, seed=5), batch_size=30, amp="bf16")
    report = replay_check(store, teacher, sample=30)
    assert report.amp == "bf16" and report.problem is None and report.beyond_tolerance == 0

    def no_autocast(amp, device):
        raise NrrError(None, f"--amp {amp} on device {device!r}: torch has no autocast for this device")

    monkeypatch.setattr(replay, "amp_dtype", no_autocast)
    report = replay_check(store, teacher, sample=30)
    assert report.amp == "bf16" and report.problem is None
    # the allowance is no excuse for a wrong seed
    doc = _manifest(store)
    doc["augmentation"]["seed"] += 1
    _write_manifest(store, doc, redigest=True)
    report = replay_check(store, teacher, sample=30)
    assert report.problem is not None and "bf16 autocast" in report.problem


@pytest.mark.parametrize("edit", ["mean", "size"])
def test_verify_teacher_compares_normalization_and_input_size(labelled: Path, tmp_path: Path, edit: str) -> None:
    """A normalization or view size edited with the digest recomputed passes plain verify; verify --teacher compares
    them with the checkpoint's own and names the difference."""
    store = _copy(labelled, tmp_path / "s")
    doc = _manifest(store)
    if edit == "mean":
        doc["dataset"]["normalization"] = {"mean": [0.5], "std": [0.25]}  # the test teacher's are FMNIST's
    else:
        doc["augmentation"]["size"] = 32
    _write_manifest(store, doc, redigest=True)
    assert verify_store(store) == []
    res = runner.invoke(app, ["verify", str(store), "--teacher", str(teacher_path()), "--sample", "10"])
    assert res.exit_code == 1, res.output
    want = "normalization" if edit == "mean" else "views are 32 px and the teacher's input is 28 px"
    assert want in res.stdout
    res = runner.invoke(app, ["verify", str(labelled), "--teacher", str(teacher_path()), "--sample", "10"])
    assert res.exit_code == 0, res.output
