"""R7 (issue 31): a store that `verify` rejects cannot be trained on. Twelve kinds of tampering, each on a copy of
one labelled store: forged arrays whose checksums and digest were made to agree, label paths that leave the store,
files edited in place under an untouched manifest, and a format downgrade. For each, verify reports a problem and
a one-epoch student on the labels it touches stops with one NrrError before its first step."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from nrrstore.errors import NrrError
from nrrstore.format.verify import verify_store
from nrrstore.train.student import train_student
from tests._bad_inputs import _downgrade, _escape_distances, damage_distances, edit_manifest
from tests._builders import forge_array, labelled_arrays_store
from tests.conftest import FMNIST_SUBSET


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, teacher) -> Path:
    """DBR distances, full soft labels, a top-2 codec and its class prior."""
    return labelled_arrays_store(tmp_path_factory.mktemp("kinds") / "s", teacher)


def _labels(s: Path) -> dict:
    return json.loads((s / "manifest.json").read_text())["labels"]


def _rel(s: Path, which: str) -> str:
    labels = _labels(s)
    if which in ("soft", "prior"):
        return labels["softlabels" if which == "soft" else "codecs_prior"]["path"]
    return labels["codecs"]["topk:2"]["fields"][which]["path"]


def _forged(which: str, index: tuple, value: float) -> Callable[[Path], None]:
    return lambda s: forge_array(s, _rel(s, which), lambda a: a.__setitem__(index, value))


def _in_place(which: str) -> Callable[[Path], None]:
    """A probability changed with the manifest left as it was (its checksum no longer agrees)."""
    def edit(s: Path) -> None:
        arr = zarr.open_array(s / _rel(s, which), mode="r+")
        data = np.asarray(arr[...])
        data[0, 0, 0] = 0.5
        arr[...] = data
    return edit


def _swap_image(s: Path) -> None:
    """The first image of the first shard replaced by the second one's bytes padded to the same size: the shard
    keeps its size, only its sha256 differs."""
    shard = min((s / "images").glob("*.tar"))
    with tarfile.open(shard) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        blobs = {m.name: tf.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    images = [m.name for m in members if not m.name.endswith((".cls", ".json"))]
    first, second = images[0], images[1]
    swapped = blobs[second][: len(blobs[first])].ljust(len(blobs[first]), b"\0")
    size = shard.stat().st_size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for m in members:
            data = swapped if m.name == first else blobs[m.name]
            tf.addfile(m, io.BytesIO(data))
    shard.write_bytes(buf.getvalue()[:size].ljust(size, b"\0"))


KINDS: dict[str, tuple[Callable[[Path], object], str]] = {
    "soft-labels-sum-past-1": (_forged("soft", (0, 0), 0.5), "kd"),
    "soft-labels-negative": (_forged("soft", (1, 2, 0), -0.25), "kd"),
    "codec-ids-repeated": (_forged("ids", (0, 1), 3), "topk:2"),
    "codec-ids-out-of-range": (_forged("ids", (1, 0, 0), 99), "topk:2"),
    "codec-probs-sum-past-1": (_forged("probs", (0, 0), 0.9), "topk:2"),
    "class-prior-not-probabilities": (_forged("prior", (0,), 2.0), "topk:2"),
    "distances-nan": (lambda s: damage_distances(s, "d_org", float("nan")), "dbr"),
    "distances-negative": (lambda s: damage_distances(s, "d_aug", -1.0), "dbr"),
    "distance-path-leaves-the-store": (lambda s: edit_manifest(s, _escape_distances, redigest=True), "dbr"),
    "codec-array-edited-in-place": (_in_place("probs"), "topk:2"),
    "image-swapped-in-place": (_swap_image, "onehot"),
    "format-downgrade": (lambda s: edit_manifest(s, _downgrade, redigest=False), "dbr"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_what_verify_rejects_nobody_trains_on(store: Path, tmp_path: Path, kind: str) -> None:
    edit, labels = KINDS[kind]
    bad = tmp_path / "s"
    shutil.copytree(store, bad)
    edit(bad)
    try:
        problems = verify_store(bad)
    except NrrError as exc:  # a manifest no reader accepts is verify's one-line failure too
        problems = [exc.message]
    assert problems, kind
    with pytest.raises(NrrError) as caught:
        train_student(bad, FMNIST_SUBSET / "test", epochs=1, labels=labels, batch_size=10, seed=0)
    assert "\n" not in caught.value.message


def test_the_untouched_store_trains(store: Path) -> None:
    """The same store, unedited, passes verify and trains on every label kind the cases above use."""
    assert verify_store(store) == []
    for labels in ("kd", "topk:2", "dbr", "onehot"):
        r = train_student(store, FMNIST_SUBSET / "test", epochs=1, labels=labels, batch_size=10, seed=0)
        assert r["epochs"] == 1
