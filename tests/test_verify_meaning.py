"""verify checks meaning, not only bytes (issue 18): distances a teacher cannot produce and value columns of
another type than the declared precision fail `verify` even when every checksum and the digest agree."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nrrstore.format.manifest import DIGEST_KEY, manifest_digest
from nrrstore.format.verify import verify_store
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
from nrrstore_cli.main import app
from tests._builders import forge_array, labelled_arrays_store, write_fmnist_store


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, teacher) -> Path:
    store = tmp_path_factory.mktemp("meaning") / "s"
    write_fmnist_store(store, per_class=3)
    relabel(store, teacher, 2, AugRecipe(size=28, group_size=10, seed=5), batch_size=30)
    return store


def _rewrite_distances(store: Path, column: str, value: float) -> None:
    """Set one value column of the first distance file to ``value`` and make every checksum and the digest
    agree."""
    doc = json.loads((store / "manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["kind"] == "distances")
    path = store / entry["path"]
    table = pq.read_table(path)
    values = pa.array(np.full(table.num_rows, value, dtype=np.float16))
    table = table.set_column(table.schema.get_field_index(column), column, values)
    pq.write_table(table, path)
    data = path.read_bytes()
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_sound_store_has_no_problems(labelled: Path) -> None:
    assert verify_store(labelled) == []


@pytest.mark.parametrize("value, problem", [(np.nan, "non-finite d_org"), (np.inf, "non-finite d_org"),
                                            (-1.0, "negative d_org")])
def test_distances_no_teacher_produces_fail_verify(labelled: Path, tmp_path: Path, value: float, problem: str) -> None:
    store = _copy(labelled, tmp_path / "s")
    _rewrite_distances(store, "d_org", value)
    problems = verify_store(store)
    assert len(problems) == 1 and problem in problems[0], problems
    res = CliRunner().invoke(app, ["verify", str(store)])
    assert res.exit_code != 0 and problem in res.output


def test_a_precision_the_columns_do_not_hold_fails_verify(labelled: Path, tmp_path: Path) -> None:
    """A manifest edited to say int8 (digest recomputed): readers would refuse the store, so verify does."""
    store = _copy(labelled, tmp_path / "s")
    doc = json.loads((store / "manifest.json").read_text())
    doc["labels"]["distances"]["precision"] = "int8"
    doc["labels"]["distances"]["quant"] = {"max": 20.0}
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))
    problems = verify_store(store)
    assert problems and all("the manifest declares int8" in p for p in problems), problems


@pytest.mark.parametrize("edit, problem", [("sha256", "labels were made by another teacher"),
                                           ("classes", "the teacher's classes differ from the store's (class 0")])
def test_verify_teacher_fails_on_another_teachers_identity(labelled: Path, tmp_path: Path, edit: str,
                                                            problem: str) -> None:
    """A manifest (digest recomputed) that records another teacher checksum, or swapped class names, fails
    `verify --teacher` with a non-zero exit, not only in a JSON field."""
    from tests._teacher import teacher_path

    store = _copy(labelled, tmp_path / "s")
    doc = json.loads((store / "manifest.json").read_text())
    if edit == "sha256":
        doc["teacher"]["sha256"] = "0" * 64
    else:
        names = doc["dataset"]["classes"]
        names[0]["name"], names[1]["name"] = names[1]["name"], names[0]["name"]
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))
    assert verify_store(store) == []  # the bytes are all consistent
    res = CliRunner().invoke(app, ["verify", str(store), "--teacher", str(teacher_path()), "--sample", "20"])
    assert res.exit_code == 1 and problem in res.output, res.output


@pytest.fixture(scope="module")
def with_arrays(tmp_path_factory: pytest.TempPathFactory, teacher) -> Path:
    """Soft labels, a top-2 codec and the class prior beside the distances."""
    return labelled_arrays_store(tmp_path_factory.mktemp("arrays") / "s", teacher)


def test_a_sound_store_with_label_arrays_has_no_problems(with_arrays: Path) -> None:
    labels = json.loads((with_arrays / "manifest.json").read_text())["labels"]
    assert labels.get("softlabels") and labels["codecs"]["topk:2"]["fields"] and labels.get("codecs_prior")
    assert verify_store(with_arrays) == []


@pytest.mark.parametrize("edit, problem", [
    ("soft-sum", "probabilities sum to"), ("soft-negative", "probabilities outside [0, 1]"),
    ("ids-twice", "a view names one class twice"), ("ids-range", "class ids outside"),
    ("probs-sum", "stored probabilities sum to more than 1"), ("prior", "the class prior must be"),
])
def test_label_arrays_that_mean_nothing_fail_verify(with_arrays: Path, tmp_path: Path, edit: str,
                                                    problem: str) -> None:
    """Every checksum and the digest agree, yet the values are not labels: verify says so in one line per array,
    and the CLI exits 1."""
    store = _copy(with_arrays, tmp_path / "s")
    labels = json.loads((store / "manifest.json").read_text())["labels"]
    fields = {k: v["path"] for k, v in labels["codecs"]["topk:2"]["fields"].items()}
    soft, prior = labels["softlabels"]["path"], labels["codecs_prior"]["path"]

    def put(index, value):
        return lambda a: a.__setitem__(index, value)

    edits = {"soft-sum": (soft, put((0, 0), 0.5)), "soft-negative": (soft, put((1, 2, 0), -0.25)),
             "ids-twice": (fields["ids"], put((0, 1), 3)), "ids-range": (fields["ids"], put((1, 0, 0), 99)),
             "probs-sum": (fields["probs"], put((0, 0), 0.9)), "prior": (prior, put(0, 2.0))}
    rel, change = edits[edit]
    forge_array(store, rel, change)
    problems = verify_store(store)
    assert len(problems) == 1 and problem in problems[0], problems
    res = CliRunner().invoke(app, ["verify", str(store)])
    assert res.exit_code == 1 and problem in res.output
