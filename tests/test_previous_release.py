"""A store written by the previous release (v0.1, commit 4ea018b) reads and verifies unchanged.

The fixture (`tests/fixtures/v0.1-store`, made by `tests/fixtures/make_v01_store.py` with v0.1 itself)
is format 1.0 without a manifest digest, with augmentation recipe version 1 (the per-view renderer),
three shards, CAMs, two epochs of distances and soft labels. `tests/fixtures/v0.1-batches.json` holds
what v0.1's own loader yielded from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from nrrstore.format import Store, verify_store
from nrrstore.inspect import inspect_path
from nrrstore.train.loader import make_loader

FIXTURES = Path(__file__).parent / "fixtures"
STORE = FIXTURES / "v0.1-store"
TEACHER = Path(__file__).resolve().parents[1] / "data" / "teachers" / "convnet3-fmnist.pt"


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def before() -> dict[str, str]:
    return _tree_digest(STORE)


def test_it_is_what_v01_wrote(before: dict[str, str]) -> None:
    doc = json.loads((STORE / "manifest.json").read_text(encoding="utf-8"))
    assert doc["format_version"] == "1.0" and "manifest_sha256" not in doc
    assert doc["tool"]["version"] == "0.1.0" and doc["augmentation"]["version"] == 1
    assert "manifest.json" in before and len(before) == 12


def test_store_reads(before: dict[str, str]) -> None:
    st = Store(STORE)
    m = st.manifest
    assert (m.format_version, m.num_images, m.num_classes, len(m.shards)) == ("1.0", 10, 10, 3)
    images = list(st.iter_images())
    assert [im.key for im in images] == st.index.column("key").to_pylist()
    assert all(im.pixels.shape == (28, 28) for im in images)
    one = st.get("c00003_000000")
    assert one.label == 3 and np.array_equal(one.pixels, images[3].pixels)
    assert one.meta["patches"][0]["key"]
    for epoch in (0, 1):
        table = st.read_distances(epoch)
        assert table.num_rows == 10 and set(table.column("epoch").to_pylist()) == {epoch}
    info = inspect_path(STORE)
    assert info["num_images"] == 10
    assert _tree_digest(STORE) == before


def test_store_verifies(before: dict[str, str]) -> None:
    assert verify_store(STORE) == []
    assert _tree_digest(STORE) == before


@pytest.mark.parametrize("labels", ["dbr", "kd"])
@pytest.mark.parametrize("epoch", [0, 1])
def test_loader_yields_what_v01_yielded(labels: str, epoch: int, before: dict[str, str]) -> None:
    expected = json.loads((FIXTURES / "v0.1-batches.json").read_text(encoding="utf-8"))[f"{labels}/{epoch}"]
    got = list(make_loader(STORE, epoch, 4, labels))
    assert len(got) == len(expected)
    for batch, want in zip(got, expected, strict=True):
        for k in ("index", "y", "y_partner", "lam"):
            assert batch[k].tolist() == want[k], k
        assert list(batch["images"].shape) == want["images_shape"]
        # recipe version 1 replays with the per-view renderer; allow for float rounding across torch builds
        assert float(batch["images"].double().sum()) == pytest.approx(want["images_sum"], rel=1e-6)
        for k in ("d_org", "d_aug", "soft"):
            if k in want:
                np.testing.assert_allclose(batch[k].numpy().astype(np.float64), want[k], atol=1e-6)
    assert _tree_digest(STORE) == before


@pytest.mark.skipif(not TEACHER.is_file(), reason="the shipped teacher is not in this checkout")
def test_replay_check_passes_with_the_teacher_that_labelled_it(single_thread: None) -> None:
    from nrrstore.labels.replay_check import replay_check
    from nrrstore.models import load_teacher

    report = replay_check(STORE, load_teacher(TEACHER), sample=20)
    assert report.problem is None, report.problem
    assert report.teacher_sha256_matches is True and report.views == 20
