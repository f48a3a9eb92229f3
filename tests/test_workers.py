"""Worker failures fail the run (issue 18): a low open-file limit is refused in one line before work (or
raised when the hard limit allows), a decoding worker that stops early ends the pass with an error instead of
a short epoch, and relabel refuses to write labels from missing views or a teacher with non-finite outputs."""

from __future__ import annotations

import copy
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nrrstore.errors import NrrError
from nrrstore.labels.relabel import relabel
from nrrstore.replay import workers as W
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import make_loader
from tests._builders import write_fmnist_store

RECIPE = AugRecipe(size=28, group_size=8, seed=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, teacher) -> Path:
    store = tmp_path_factory.mktemp("w") / "s"
    write_fmnist_store(store, per_class=4, shard_size=12)
    relabel(store, teacher, 2, RECIPE, batch_size=16)
    return store


def _limit_open_files(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def test_a_low_open_file_limit_is_refused_in_one_line(labelled: Path, fmnist_test_shards: Path) -> None:
    cmd = [sys.executable, "-m", "nrrstore_cli.main", "train-student", str(labelled), "--val", str(fmnist_test_shards),
           "--epochs", "1", "--workers", "2"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limit_open_files(48, 48))
    lines = [line for line in res.stderr.splitlines() if "warning" not in line]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    want = ("nrrstore: too many open files: the open-file limit is 48; raise `ulimit -n` (to at least 256) "
            "or use fewer --workers (2 now)")
    assert lines == [want], res.stderr


def test_a_low_soft_limit_is_raised_when_the_hard_one_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip("the hard open-file limit is below what the check needs")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
        W.ensure_open_files(2)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_that_stops_early_fails_the_pass(labelled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = list(make_loader(labelled, 0, 16, "dbr", workers=2))
    real_iter = W.ItemSource.__iter__

    def first_item_only(self):
        return iter(list(real_iter(self))[:1])

    monkeypatch.setattr(W.ItemSource, "__iter__", first_item_only)  # workers are forked: they see it
    got: list[dict] = []
    with pytest.raises(NrrError, match=r"the loader ended after \d+ of \d+ batches"):
        got.extend(make_loader(labelled, 0, 16, "dbr", workers=2))
    assert len(got) < len(whole)


def test_a_worker_exception_is_one_line(labelled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self):
        raise OSError(24, "Too many open files")
        yield

    monkeypatch.setattr(W.ItemSource, "__iter__", broken)
    with pytest.raises(NrrError, match="too many open files"):
        list(make_loader(labelled, 0, 16, "dbr", workers=1))


def test_relabel_refuses_a_teacher_with_non_finite_outputs(tmp_path: Path, teacher) -> None:
    store = tmp_path / "s"
    write_fmnist_store(store, per_class=2, shard_size=12)
    bad = copy.deepcopy(teacher)
    with torch.no_grad():
        next(bad.model.parameters()).fill_(float("nan"))
    with pytest.raises(NrrError, match="not finite"):
        relabel(store, bad, 2, RECIPE, batch_size=16)
    from nrrstore.format.reader import Store

    assert not Store(store).manifest.labels.get("distances")  # nothing written


def test_relabel_refuses_epochs_whose_labels_cannot_fit(labelled: Path, teacher, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped --epochs ends in one line before any work (and before --overwrite removes anything)."""
    import shutil

    from nrrstore.format.reader import Store

    before = Store(labelled).manifest.labels
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(NrrError, match=r"1000000000 epochs of 40 images need at least .* free; use fewer --epochs"):
        relabel(labelled, teacher, 10**9, RECIPE, overwrite=True)
    assert Store(labelled).manifest.labels == before


@pytest.mark.parametrize("cmd", [["train-student", "s", "--val", "v"], ["relabel", "s", "--teacher", "t.pt"],
                                 ["evaluate", "s", "--val", "v"], ["convert-softlabels", "l", "--images", "i",
                                                                    "--out", "o"]])
def test_an_absurd_worker_count_is_a_usage_error(cmd: list[str]) -> None:
    """A mistyped --workers once forked thousands of processes and exhausted memory; now it is refused first."""
    from typer.testing import CliRunner

    from nrrstore_cli.main import app

    res = CliRunner().invoke(app, [*cmd, "--workers", "100000"])
    assert res.exit_code == 2 and "--workers" in res.output and "64" in res.output, res.output
    with pytest.raises(NrrError, match="more than 64"):
        W.worker_count(100000)


def test_the_disk_check_sizes_distance_files_as_written(labelled: Path, teacher, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's size of the distance files is what relabel then writes, to within a disk block per file; a
    disk with room for the payload (4 B per view) but not for the files is refused before any work."""
    import shutil

    from nrrstore.format.distances import DISK_BLOCK, distance_files_bytes
    from nrrstore.format.reader import Store

    store = tmp_path / "s"
    shutil.copytree(labelled, store)
    relabel(store, teacher, 30, RECIPE, batch_size=40, overwrite=True, epochs_per_file=10)
    m = Store(store).manifest
    files = [f for f in m.files if f.kind == "distances"]
    written = sum(-(-f.bytes // DISK_BLOCK) * DISK_BLOCK for f in files)
    predicted = distance_files_bytes(m.num_images, 30, 10, "fp16")
    assert len(files) == 3 and abs(predicted - written) <= DISK_BLOCK * len(files), (predicted, written)
    assert predicted > 4 * m.num_images * 30  # the payload alone would pass a disk this small
    free = 4 * m.num_images * 30 + 1
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    with pytest.raises(NrrError, match=r"30 epochs of 40 images need at least .* free; use fewer --epochs"):
        relabel(store, teacher, 30, RECIPE, overwrite=True, epochs_per_file=10)
