"""The worker pool `prepare --workers` and `convert-softlabels --workers` share: results in input order, a
bounded number of items in flight, a dead worker and a Ctrl-C each end the run in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nrrstore.errors import NrrError
from nrrstore.ordered_pool import OrderedPool
from tests._builders import make_fixture
from tests._procs import alive, children

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _scaled(factor: int, x: int) -> int:
    time.sleep(0.002 * (x % 3))  # uneven durations: results finish out of order
    return factor * x


def _die_at(stop: int, x: int) -> int:
    if x == stop:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_in_input_order_with_few_items_read_ahead(workers: int) -> None:
    pulled: list[int] = []

    def items():  # 1-tuples, counted as they are read
        for x in range(40):
            pulled.append(x)
            yield (x,)

    with OrderedPool(3, workers, command="test", ahead=2) as pool:
        got = []
        for r in pool.map(_scaled, items()):
            got.append(r)
            # never more than ahead x workers items sent beyond the one handed back (one at a time here)
            assert len(pulled) <= len(got) + max(1, 2 * workers)
    assert got == [3 * x for x in range(40)]


def test_a_worker_that_dies_fails_the_run_in_one_line() -> None:
    with pytest.raises(NrrError) as info, OrderedPool(5, 2, command="test") as pool:
        list(pool.map(_die_at, ((x,) for x in range(20))))
    assert str(info.value).splitlines() == [
        "a test worker process died (killed, or out of memory?); rerun with fewer --workers"]


class _KillAfterPickling:
    """Kills its worker 10 ms after it was pickled: while the result it ends is being sent to the parent."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return (_KillAfterPickling, ())


def _die_while_sending(_: None, x: int) -> object:
    return (b"x" * (64 << 20), _KillAfterPickling()) if x == 1 else None


def die_while_sending() -> None:
    """Run in a subprocess by the test below (a regression hangs: the subprocess's timeout ends it)."""
    try:
        with OrderedPool(None, 2, command="test") as pool:
            list(pool.map(_die_while_sending, ((x,) for x in range(4))))
    except NrrError as exc:
        print(exc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
def test_a_worker_killed_while_sending_a_result_fails_the_run_and_does_not_hang() -> None:
    """The half-sent result used to leave the pool's reader thread waiting for the rest forever (and with it
    the run, and a Ctrl-C's cleanup: test_prepare_workers.py's stop test hung about once in 15 runs)."""
    res = subprocess.run([sys.executable, "-c", "from tests.test_ordered_pool import die_while_sending as f; f()"],
                         check=False, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.splitlines() == [
        "a test worker process died (killed, or out of memory?); rerun with fewer --workers"], res.stderr[-2000:]


def _ctrl_c_default() -> None:
    """A shell without job control starts background jobs with SIGINT ignored; a terminal's Ctrl-C reaches a
    foreground command with the default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_converter_with_workers_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the workers ignore it, the parent prints one line and ends them
    (they used to print a KeyboardInterrupt traceback each)."""
    make_fixture(tmp_path / "fx", ["cutmix"] * 600, per_class=3, batch=6)  # 3,000 label files: seconds of work
    proc = subprocess.Popen([sys.executable, "-m", "nrrstore_cli.main", "convert-softlabels", "fx/labels",
                             "--images", "fx/images", "--out", "s", "--epochs-per-file", "10", "--workers", "2"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_ctrl_c_default)  # noqa: PLW1509 (single-threaded)
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = children(proc.pid)
    assert proc.poll() is None and len(kids) >= 2, "the workers never started"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["nrrstore: interrupted"], err[-2000:]
    assert not (tmp_path / "s").exists() and not (tmp_path / ".lock-s").exists()
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids)
