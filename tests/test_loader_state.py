"""Checkpointing the loader mid-epoch: state_dict() / load_state_dict(), as StatefulDataLoader offers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nrrstore.errors import NrrError
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import make_loader
from tests._builders import _same, write_fmnist_store
from tests._teacher import one_thread

pytestmark = pytest.mark.usefixtures("single_thread")
BATCH = 7  # 30 images: 5 batches per epoch, the last one short


@pytest.fixture(scope="module")
def store(tmp_path_factory, teacher) -> Path:
    root = tmp_path_factory.mktemp("state") / "s"
    with one_thread():
        write_fmnist_store(root, per_class=3, shard_size=8)
        relabel(root, teacher, 2, AugRecipe(size=28, group_size=8, seed=3), full_softlabels=True, batch_size=16)
    return root


def _loader(store: Path, workers: int = 0, **kw):
    return make_loader(store, 0, kw.pop("batch_size", BATCH), kw.pop("labels", "dbr"), workers=workers,
                       num_epochs=2, softlabels=True, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_yields_exactly_the_remaining_batches(store: Path, workers: int) -> None:
    full = list(_loader(store, workers))
    assert len(full) == 10 and [(b["epoch"], b["step"]) for b in full[3:6]] == [(0, 3), (0, 4), (1, 0)]
    for k in (1, 3, 5, 9):
        saved = _loader(store, workers)
        batches = iter(saved)
        taken = [next(batches) for _ in range(k)]
        assert _same(taken, full[:k])
        state = json.loads(json.dumps(saved.state_dict()))  # plain data: fits torch.save and JSON alike
        assert state["batches_yielded"] == k
        assert state["next"] == {"epoch": full[k]["epoch"], "step": full[k]["step"]}
        restored = _loader(store, workers)
        restored.load_state_dict(state)
        assert _same(list(restored), full[k:]), k
        assert _same(list(restored), full)  # the pass after the resumed one is whole again
        assert _same(list(batches), full[k:])  # and the saved loader itself was not disturbed


def test_a_finished_or_unstarted_pass_restores_as_a_whole_pass(store: Path) -> None:
    loader = _loader(store)
    fresh = loader.state_dict()
    assert fresh["batches_yielded"] == 0 and fresh["next"] == {"epoch": 0, "step": 0}
    full = list(loader)
    done = loader.state_dict()
    assert done["batches_yielded"] == 0
    restored = _loader(store)
    restored.load_state_dict(done)
    assert _same(list(restored), full)


def test_epoch_step_resume_agrees_with_the_state(store: Path) -> None:
    full = list(_loader(store))
    saved = _loader(store)
    batches = iter(saved)
    for _ in range(6):
        next(batches)
    at = saved.state_dict()["next"]
    assert at == {"epoch": 1, "step": 1}
    rest = list(make_loader(store, at["epoch"], BATCH, "dbr", start_step=at["step"], softlabels=True))
    assert _same(rest, full[6:])


def test_a_state_of_another_loader_is_refused(store: Path, tmp_path: Path, teacher) -> None:
    state = _loader(store).state_dict()
    with pytest.raises(NrrError, match="batch_size differ"):
        _loader(store, batch_size=BATCH + 1).load_state_dict(state)
    with pytest.raises(NrrError, match="labels differ"):
        _loader(store, labels="onehot").load_state_dict(state)
    other = tmp_path / "other"
    shutil.copytree(store, other)
    relabel(other, teacher, 2, AugRecipe(size=28, group_size=8, seed=4), overwrite=True, batch_size=16,
            full_softlabels=True)
    with pytest.raises(NrrError, match="augmentation differ"):
        _loader(other).load_state_dict(state)
    with pytest.raises(NrrError, match="not an nrrstore loader state"):
        _loader(store).load_state_dict({"epoch": 3})
    with pytest.raises(NrrError, match="version 9"):
        _loader(store).load_state_dict({**state, "version": 9})

