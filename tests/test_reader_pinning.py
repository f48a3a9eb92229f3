"""Readers and writers agree (issue 18, R2): a loader running beside `relabel --overwrite` finishes on the
labels it started with or fails in one line; it never mixes two versions' labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nrrstore.errors import NrrError
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import make_loader
from tests._builders import write_fmnist_store

OLD, NEW = AugRecipe(size=28, group_size=8, seed=3), AugRecipe(size=28, group_size=8, seed=4)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, teacher) -> tuple[Path, Path]:
    """The same images labelled twice (other augmentation seeds): the old store and a copy relabelled."""
    root = tmp_path_factory.mktemp("pin")
    old = root / "old"
    write_fmnist_store(old, per_class=4, shard_size=12)
    relabel(old, teacher, 4, OLD, batch_size=16, epochs_per_file=1)
    new = root / "new"
    shutil.copytree(old, new)
    relabel(new, teacher, 4, NEW, batch_size=16, epochs_per_file=1, overwrite=True)
    return old, new


def _d_org(batches: list[dict]) -> list[np.ndarray]:
    return [b["d_org"].numpy() for b in batches]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("after", [0, 3])
def test_a_loader_beside_an_overwriting_relabel_never_mixes(versions: tuple[Path, Path], tmp_path: Path, teacher,
                                                            workers: int, after: int) -> None:
    old, new = versions
    want_old = _d_org(list(make_loader(old, 0, 16, "dbr", num_epochs=4)))
    store = tmp_path / "s"
    shutil.copytree(old, store)
    got: list[dict] = []
    loader = make_loader(store, 0, 16, "dbr", num_epochs=4, workers=workers)
    it = iter(loader)
    try:
        for _ in range(after):  # some batches read before the writer starts
            got.append(next(it))
        relabel(store, teacher, 4, NEW, batch_size=16, epochs_per_file=1, overwrite=True)  # the writer
        got.extend(it)
    except NrrError as exc:  # failing is allowed, in one line naming the store's file or folder
        assert "\n" not in str(exc) and str(store) in str(exc) and "changed" in str(exc)
        assert _same(_d_org(got), want_old[:len(got)])  # what was read before failing is all old
        return
    assert _same(_d_org(got), want_old)  # finished: entirely on the old labels
    assert Store(store).manifest.labels["distances"]["files"] == Store(new).manifest.labels["distances"]["files"]


def test_a_file_replaced_under_a_pinned_reader_is_refused(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    store = tmp_path / "s"
    shutil.copytree(old, store)
    reader = Store(store)
    reader.read_distances(0)  # pins the epoch-0 file
    part = reader.distance_files()[0]["path"]
    shutil.copy(new / part, store / (part + ".tmp"))
    (store / (part + ".tmp")).replace(store / part)  # what an overwriting writer does: a new file, renamed
    with pytest.raises(NrrError, match="changed since this store's manifest was read"):
        reader.read_distances(0)
    with pytest.raises(NrrError, match="changed since"):
        Store(store).read_distances(0)  # a fresh reader of the old manifest: the checksum tells
