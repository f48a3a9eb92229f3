"""SIGTERM and SIGHUP stop a command like Ctrl-C: one line, exit 128 + signal, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nrrstore_cli._common import PROGRESS_LOG_ENV
from tests.conftest import ROOT

CLI = [sys.executable, "-m", "nrrstore_cli.main"]


def _wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60) -> None:
    """The handshake: return once ``ready()`` holds, the process ended, or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _progress(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A progress log outside the command's folder, and the environment that makes the command write it."""
    log = tmp_path.parent / f"{tmp_path.name}-progress.jsonl"
    return log, {**os.environ, "OMP_NUM_THREADS": "1", PROGRESS_LOG_ENV: str(log)}


def _updates(log: Path, task: str) -> int:
    """How many progress updates of tasks starting with ``task`` the command has written."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.startswith(f'{{"task": "{task}'))


def _stop_when(proc: subprocess.Popen, log: Path, task: str, sig: int, updates: int = 3) -> tuple[int, str]:
    """The handshake: stop once the command has reported ``updates`` steps of ``task`` (well inside the work)."""
    _wait_for(proc, lambda: _updates(log, task) >= updates, 600)
    assert proc.poll() is None, "the command ended before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _default_dispositions() -> None:
    """`nohup` (or a shell's background job) hands its children SIGHUP (SIGINT) ignored, and nrrstore keeps an
    inherited "ignore", as every Unix command should; a terminal's command gets the default actions."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "nrrstore: terminated"),
                                                   (signal.SIGHUP, 129, "nrrstore: hung up")])
def test_stopped_teacher_training_leaves_nothing(tmp_path: Path, sig: int, code: int, line: str) -> None:
    out = tmp_path / "t.pt"
    log, env = _progress(tmp_path)
    proc = subprocess.Popen([*CLI, "teacher", "train", "--in", str(ROOT / "data/fashion-mnist/train"), "--epochs", "50",
                             "--out", str(out)], cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_dispositions)  # noqa: PLW1509
    rc, err = _stop_when(proc, log, "teacher train", sig)
    last = err.strip().splitlines()[-1]
    assert rc == code and last.startswith(line), err
    # No checkpoint, no temporary, no lock file: at most the state of the epochs that ended, for --resume.
    assert set(os.listdir(tmp_path)) <= {".t.pt.resume"}
    if os.listdir(tmp_path):  # the line says what was kept and what the rerun does
        assert "; kept the state after epoch " in last and "rerun with --resume" in last, last
    else:
        assert last == line, last


def test_nohup_keeps_a_command_alive_through_a_hang_up(tmp_path: Path) -> None:
    """An inherited SIGHUP "ignore" (`nohup nrrstore teacher train ... &`) is kept: the hang-up does nothing."""
    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    log, env = _progress(tmp_path)
    proc = subprocess.Popen([*CLI, "teacher", "train", "--in", str(ROOT / "data/fashion-mnist/train"), "--epochs", "50",
                             "--out", str(tmp_path / "t.pt")], cwd=tmp_path, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, preexec_fn=nohup)  # noqa: PLW1509
    _wait_for(proc, lambda: _updates(log, "teacher train") >= 1, 600)
    proc.send_signal(signal.SIGHUP)
    before = _updates(log, "teacher train")  # the signal is delivered by now: later updates came after it
    _wait_for(proc, lambda: _updates(log, "teacher train") >= before + 3, 600)
    assert proc.poll() is None, proc.communicate()[1]  # it kept training after the hang-up
    rc, err = _stop_when(proc, log, "teacher train", signal.SIGTERM, before + 4)
    assert rc == 143 and err.strip().splitlines()[-1].startswith("nrrstore: terminated"), err
    assert set(os.listdir(tmp_path)) <= {".t.pt.resume"}


def test_stopped_distill_leaves_nothing_before_its_first_class(tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = subprocess.Popen([*CLI, "distill", "--in", str(ROOT / "data/fashion-mnist/train"), "--ipc", "10",
                             "--teacher", str(ROOT / "data/teachers/convnet3bn-fmnist.pt"), "--out", str(out),
                             "--iterations", "100000", "--classes-per-pass", "10"], cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_progress(tmp_path)[1])
    rc, err = _stop_when(proc, _progress(tmp_path)[0], "NRR (image steps)", signal.SIGTERM, 2)
    assert rc == 143 and err.strip().splitlines()[-1] == "nrrstore: terminated", err
    assert sorted(os.listdir(tmp_path)) == []


def test_a_symlinked_output_shares_its_target_lock(tmp_path: Path) -> None:
    from nrrstore.errors import NrrError
    from nrrstore.format.lock import output_lock

    (tmp_path / "s").mkdir()
    (tmp_path / "t").symlink_to(tmp_path / "s")
    code = ("import sys, time; from nrrstore.format.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(NrrError, match=f"pid {holder.pid}"), output_lock(tmp_path / "t"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_stopped_relabel_says_what_it_kept_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The stop line names the epoch files kept; the same command then resumes from them and says so."""
    from tests._builders import write_fmnist_store

    store = tmp_path / "s"
    write_fmnist_store(store, per_class=3, shard_size=50)
    args = [*CLI, "relabel", str(store), "--teacher", str(ROOT / "data/teachers/convnet3bn-fmnist.pt"), "--epochs",
            "100", "--epochs-per-file", "1"]
    proc = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for(proc, lambda: any((store / ".relabel").glob("distances-e*.parquet")), 120)  # a finished epoch file
    assert proc.poll() is None, "relabel ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("nrrstore: terminated; kept "), err
    assert " of 100 epoch files in " in last and last.endswith("rerun the same command to resume"), last
    done = len(list((store / ".relabel").glob("distances-e*.parquet")))
    assert done >= 1
    rerun = subprocess.run(args, check=False, cwd=tmp_path, text=True,
                           capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: {done} file(s) were already done" in rerun.stdout, rerun.stdout


def test_a_stopped_distill_says_what_it_kept_and_the_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = [*CLI, "distill", "--in", str(ROOT / "data/fashion-mnist/train"), "--ipc", "1", "--teacher",
            str(ROOT / "data/teachers/convnet3bn-fmnist.pt"), "--out", str(out), "--iterations", "400",
            "--classes-per-pass", "1", "--relabel-epochs", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    _wait_for(proc, (tmp_path / ".work-s" / "class-00000.json").exists, 120)  # the first class is finished
    assert proc.poll() is None, "distill ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("nrrstore: terminated; kept "), err
    assert " of 10 finished classes in " in last and ".work-s" in last, last
    done = len(list((tmp_path / ".work-s").glob("class-*.json")))
    rerun = subprocess.run(args, check=False, cwd=tmp_path, text=True, capture_output=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: {done} of 10 classes were already done" in rerun.stdout, rerun.stdout


STUCK = """
import ctypes, sys
from nrrstore_cli._common import handle_errors

@handle_errors
def stuck(ready: str) -> None:
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: glibc's PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    open(ready, "w").close()
    libc.pthread_mutex_lock(mutex)  # a deadlock inside C, as a Parquet read under a memory cap can end in

stuck(ready=sys.argv[1])
"""


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "nrrstore: terminated"),
                                                   (signal.SIGHUP, 129, "nrrstore: hung up")])
def test_a_command_stuck_in_a_library_call_still_stops(tmp_path: Path, sig: int, code: int, line: str) -> None:
    """Python runs signal handlers between bytecodes only, so a main thread blocked in C never sees SIGTERM; the
    stop watch ends the process once the grace period has passed, with the stop line and the signal's code."""
    from nrrstore_cli._common import STUCK_GRACE_S

    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", STUCK, str(ready)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_dispositions)  # noqa: PLW1509
    _wait_for(proc, ready.exists)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=STUCK_GRACE_S + 120)
    assert proc.returncode == code, err
    expected = f"{line} (stuck in a library call for {STUCK_GRACE_S:.0f} s; stopped without its cleanup)"
    assert err.strip().splitlines() == [expected], err


SLOW_CLEANUP = """
import sys, time
import nrrstore_cli._common as common
from nrrstore_cli._common import handle_errors

common.STUCK_GRACE_S = 0.2  # far shorter than the cleanup below

@handle_errors
def slow(ready: str, cleaned: str) -> None:
    try:
        open(ready, "w").close()
        while True:
            time.sleep(0.01)
    finally:  # a cleanup that outlasts the grace period, as a stopped distill's on a busy machine did
        time.sleep(1.0)
        open(cleaned, "w").close()

slow(ready=sys.argv[1], cleaned=sys.argv[2])
"""


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "nrrstore: terminated"),
                                                   (signal.SIGINT, 130, "nrrstore: interrupted")])
def test_a_long_cleanup_after_a_stop_is_not_cut_short(tmp_path: Path, sig: int, code: int, line: str) -> None:
    """The stop watch is for a main thread stuck in C. Once the signal's handler has run, the command is alive and
    cleaning up, however long that takes on a busy machine (a stopped distill was cut short after 10 s of it)."""
    ready, cleaned = tmp_path / "ready", tmp_path / "cleaned"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLEANUP, str(ready), str(cleaned)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_dispositions)  # noqa: PLW1509
    _wait_for(proc, ready.exists)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and err.strip().splitlines() == [line], err
    assert cleaned.exists()  # the cleanup ran to its end


def test_a_second_sigterm_does_not_cut_the_cleanup(tmp_path: Path) -> None:
    """A whole cgroup signalled (systemd, Slurm) and the same signal passed on by a parent: two copies. The
    second must not interrupt the cleanup the first started."""
    ready, cleaned = tmp_path / "ready", tmp_path / "cleaned"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLEANUP, str(ready), str(cleaned)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_dispositions)  # noqa: PLW1509
    _wait_for(proc, ready.exists)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines() == ["nrrstore: terminated"], err
    assert cleaned.exists()
