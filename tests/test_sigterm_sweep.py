"""U5 (issue 17): SIGTERM at 10 points across prepare, distill, relabel, convert, import, evaluate and
train-student leaves nothing behind but the command's own resume state, and each rerun's output is
byte-identical to an uninterrupted run's.

Each case builds its inputs, runs the command to the end (the reference; cases that differ only in where they
stop share one), then builds the same inputs again in the same folder and sends SIGTERM a set time after the
command took its output lock, then reruns it. The stop
must exit 143 with `nrrstore: terminated` as its last line and leave no lock or temporary file, except the
resume state a resumable command keeps on purpose (`.tmp-OUT`, `.work-OUT`, `.convert-OUT`, a `--work` or
`--checkpoint`); after the rerun the folder must hold the reference's files with the same bytes. Where the stop
lands within a command depends on the machine's speed: whatever it hits, the invariants must hold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from nrrstore_cli._common import PROGRESS_LOG_ENV
from tests._bad_inputs import snapshot
from tests._builders import make_fixture, write_fmnist_store, write_imagefolder, write_rded
from tests._teacher import one_thread
from tests.conftest import FMNIST_SUBSET, ROOT

pytestmark = pytest.mark.slow
TEACHER = str(ROOT / "data" / "teachers" / "convnet3bn-fmnist.pt")
TRAIN, TEST = str(FMNIST_SUBSET / "train"), str(FMNIST_SUBSET / "test")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1700000000"}


def _labelled_store(w: Path) -> None:
    from nrrstore.labels.relabel import relabel
    from nrrstore.models import load_teacher
    from nrrstore.replay.recipe import AugRecipe

    with one_thread():
        write_fmnist_store(w / "s", per_class=5, shard_size=25)
        relabel(w / "s", load_teacher(TEACHER), 30, AugRecipe(size=28, group_size=25), batch_size=50)


@dataclass
class Case:
    setup: Callable[[Path], object]  # builds the inputs in a folder
    args: list[str]
    lock: str  # the output whose lock shows the command has started its work
    stop_at: tuple[str, float]  # stop once a progress task starting so has done this share of its total
    json: bool = False  # compare stdout's JSON (minus timings) too: the output of evaluate and train-student


CASES = {
    "prepare-imagefolder": Case(lambda w: write_imagefolder(w / "folders", 150),
                                ["prepare", "imagefolder", "folders", "--out", "shards", "--shard-size", "50"],
                                "shards", ("write shards", 0.2)),
    "distill-cidd": Case(lambda w: None, ["distill", "--in", TRAIN, "--ipc", "10", "--teacher", TEACHER,
                                          "--iterations", "40", "--relabel-epochs", "10", "--out", "d"], "d",
                        ("CIDD", 0.3)),
    "distill-nrr": Case(lambda w: None, ["distill", "--in", TRAIN, "--ipc", "10", "--teacher", TEACHER,
                                         "--iterations", "40", "--relabel-epochs", "10", "--out", "d"], "d",
                       ("NRR (image steps)", 0.3)),
    "distill-relabel": Case(lambda w: None, ["distill", "--in", TRAIN, "--ipc", "3", "--teacher", TEACHER,
                                             "--iterations", "5", "--relabel-epochs", "400", "--out", "d"], "d",
                           ("relabel views", 0.2)),
    "relabel-early": Case(lambda w: write_fmnist_store(w / "s", per_class=20, shard_size=50),
                          ["relabel", "s", "--teacher", TEACHER, "--epochs", "100", "--labels", "dbr,topk:2,full"],
                          "s", ("relabel views", 0.05)),
    "relabel-late": Case(lambda w: write_fmnist_store(w / "s", per_class=20, shard_size=50),
                         ["relabel", "s", "--teacher", TEACHER, "--epochs", "100", "--labels", "dbr,topk:2,full"],
                         "s", ("relabel views", 0.6)),
    "convert-softlabels": Case(lambda w: make_fixture(w / "fx", ["cutmix"] * 120, per_class=3, batch=6),
                               ["convert-softlabels", "fx/labels", "--images", "fx/images", "--out", "s",
                                "--epochs-per-file", "10"], "s", ("convert label files", 0.3)),
    "import-rded": Case(lambda w: write_rded(w / "r", list(range(10)), ipc=10),
                        ["import", "rded", "r", "--out", "s", "--teacher", TEACHER, "--epochs", "100"], "s",
                        ("relabel views", 0.3)),
    "evaluate": Case(_labelled_store, ["evaluate", "s", "--val", TEST, "--labels", "dbr", "--seeds", "2", "--epochs",
                                       "30", "--batch-size", "10", "--work", "ev", "--json"], "ev",
                     ("evaluate (student steps)", 0.6), json=True),  # one cell kept, the second half-trained
    "train-student": Case(_labelled_store, ["train-student", "s", "--val", TEST, "--epochs", "30", "--batch-size",
                                            "10", "--checkpoint", "ck.pt", "--resume", "--json"], "ck.pt",
                          ("train student", 0.4), json=True),
}
CLI = [sys.executable, "-m", "nrrstore_cli.main"]
TIMINGS = {"seconds", "cells_resumed", "resumed_at_epoch", "history"}  # wall times, and where a run picked up


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *cmd], check=False, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)


def _stable(out: str) -> object:
    def strip(v: object) -> object:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in TIMINGS}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(json.loads(out))


def _reached(log: Path, task: str, share: float) -> bool:
    """Whether the progress log shows a task starting with ``task`` that has done ``share`` of its total."""
    if not log.exists():
        return False
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:  # the line being written
            continue
        if e["task"].startswith(task) and e["total"] and e["done"] >= share * e["total"]:
            return True
    return False


def _locks_and_temporaries(folder: Path, resume: set[str]) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if (p.name.startswith((".lock-", ".tmp-", ".import-")) and p.name not in resume)
            and not any(part in resume for part in p.relative_to(folder).parts[:-1])]


# Cases with the same inputs and arguments (stopped at different points) share one uninterrupted reference run,
# made in one folder per group (manifests record absolute paths); xdist keeps a group on one worker.
GROUPS = {"distill-cidd": "distill", "distill-nrr": "distill", "relabel-early": "relabel", "relabel-late": "relabel"}
_REFERENCES: dict[str, tuple[dict[str, str], str]] = {}
assert all(CASES[a].args == CASES[b].args for a in GROUPS for b in GROUPS if GROUPS[a] == GROUPS[b])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(GROUPS.get(n, n))) for n in CASES])
def test_sigterm_leaves_nothing_and_the_rerun_is_identical(name: str, tmp_path_factory, monkeypatch) -> None:
    case = CASES[name]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", ENV["SOURCE_DATE_EPOCH"])  # inputs built here are reproducible too
    group = GROUPS.get(name, name)
    w = tmp_path_factory.getbasetemp() / f"sweep-{group}" / "w"  # one folder for all runs of the group
    kept = {"ev", "ck.pt"} if case.json else set()  # resume state that records wall times: compared by its JSON

    def outputs() -> dict[str, str]:
        return {k: v for k, v in snapshot(w).items() if k.split("/")[0] not in kept}
    if group not in _REFERENCES:
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir(parents=True)
        case.setup(w)
        full = _run(case.args, w)
        assert full.returncode == 0, full.stderr
        _REFERENCES[group] = outputs(), full.stdout
    reference, full_stdout = _REFERENCES[group]
    shutil.rmtree(w)
    w.mkdir()
    case.setup(w)
    before = snapshot(w)
    log = w.parent / f"progress-{name}.jsonl"  # the handshake: the command's own progress, not a sleep
    log.unlink(missing_ok=True)
    proc = subprocess.Popen([*CLI, *case.args], cwd=w, env={**ENV, PROGRESS_LOG_ENV: str(log)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = w / f".lock-{Path(case.lock).name}"
    deadline = time.monotonic() + 600
    while not (lock.exists() and _reached(log, *case.stop_at)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"{name} ended before it could be stopped: give it more work"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("nrrstore: terminated"), err[-2000:]
    out = Path(case.args[case.args.index("--out") + 1]).name if "--out" in case.args else case.lock
    resume = {f".tmp-{out}", f".work-{out}", f".convert-{out}", "ev", "ck.pt"}  # what a rerun picks up
    assert _locks_and_temporaries(w, resume) == [], err[-2000:]
    left = {k for k in snapshot(w) if k not in before}
    assert all(k.split("/")[0] in resume or k.split("/")[0] == out for k in left), sorted(left)
    again = _run(case.args, w)
    assert again.returncode == 0, again.stderr
    if case.json:
        assert _stable(again.stdout) == _stable(full_stdout)
    assert outputs() == reference
