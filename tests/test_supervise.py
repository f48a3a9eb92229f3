"""Under an address-space cap (``ulimit -v``) the `nrrstore` script runs the command in a watched child
(`nrrstore_cli.supervise`): a death inside a C library becomes one ``nrrstore:`` line, everything else passes
through unchanged, stop signals reach the command once, and a killed parent leaves no orphan."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nrrstore_cli.supervise import RAISE_LIMIT, death_line, supervise
from tests._procs import alive, children
from tests.conftest import ROOT
from tests.test_signals import _progress, _stop_when, _updates, _wait_for

CAP = 300 * 2**20
SCRIPT = Path(sys.executable).parent / "nrrstore"  # the installed entry point (`pip install -e .`)
HINT = "raise the memory limit (ulimit -v, or the container's) or lower --batch-size (was 64)"
SEND_HINT = ("import os\nfd = int(os.environ['NRRSTORE_SUPERVISOR_FD'])\n"
             f"os.write(fd, {HINT!r}.encode()); os.close(fd)\n")

# What C libraries really print before they end a process under a cap (glibc's loader, libstdc++).
GLIBC = "import os\nos.write(2, b'Fatal glibc error: cannot allocate memory for thread-local data\\n'); os._exit(127)\n"
BAD_ALLOC = ("import os\nos.write(2, b\"terminate called after throwing an instance of 'std::bad_alloc'\\n"
             "  what():  std::bad_alloc\\n\"); os.abort()\n")
SEGV = "import ctypes\nctypes.string_at(0)\n"


@pytest.mark.parametrize(("code", "start"), [
    (GLIBC, ("nrrstore: out of memory inside a C library (Fatal glibc error: cannot allocate memory for "
             "thread-local data) under ulimit -v 300 MiB; ")),
    (BAD_ALLOC, ("nrrstore: out of memory inside a C library (terminate called after throwing an instance of "
                 "'std::bad_alloc') under ulimit -v 300 MiB; ")),
    (SEGV, "nrrstore: crashed inside a C library (SIGSEGV) under ulimit -v 300 MiB, most likely out of memory; "),
], ids=["glibc-tls", "bad-alloc", "segfault"])
def test_a_death_inside_a_c_library_is_one_line_with_the_commands_hint(code: str, start: str, capfd,
                                                                      monkeypatch) -> None:
    monkeypatch.delenv("PYTHONFAULTHANDLER", raising=False)  # the segfault must die silently, as in C
    # The command's last output and the library's message in one write: the line before it is still shown.
    child = "import os\nos.write(2, b'bar 1/3\\n')\n" + SEND_HINT + code.replace("os.write(2, b", "os.write(2, b'bar 2/3\\n' + b")
    rc = supervise([sys.executable, "-c", child], CAP)
    err = capfd.readouterr().err
    assert rc == 1
    shown = ["bar 1/3", "bar 2/3"] if "os.write(2" in code else ["bar 1/3"]
    assert err.splitlines() == [*shown, start + HINT], err  # the command's own output stays; the library's goes


def test_without_the_commands_hint_the_line_says_to_raise_the_limit(capfd) -> None:
    assert supervise([sys.executable, "-c", GLIBC], CAP) == 1
    assert capfd.readouterr().err.strip().endswith(f"; {RAISE_LIMIT}")


def test_every_other_ending_passes_through_unchanged(capfd) -> None:
    # A library's message with a normal exit is not a death: it is shown as printed, nothing is lost.
    said = "import os, sys\nos.write(2, b'nrrstore: out of memory; lower --workers\\n'); sys.exit(1)\n"
    assert supervise([sys.executable, "-c", said], CAP) == 1
    assert capfd.readouterr().err == "nrrstore: out of memory; lower --workers\n"
    kept = "import os, sys\nos.write(2, b'warning: Cannot allocate memory for a cache, going on\\n'); sys.exit(0)\n"
    assert supervise([sys.executable, "-c", kept], CAP) == 0
    assert capfd.readouterr().err == "warning: Cannot allocate memory for a cache, going on\n"
    assert supervise([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], CAP) == 3
    assert capfd.readouterr() == ("out\n", "")


def test_death_lines() -> None:
    assert death_line(0, b"", CAP, RAISE_LIMIT) is None and death_line(2, b"usage", CAP, RAISE_LIMIT) is None
    assert death_line(127, b"", CAP, RAISE_LIMIT) is None  # 127 alone: a missing program, not a death in C
    assert death_line(-signal.SIGKILL, b"", CAP, "h") == "killed by SIGKILL, most likely by the kernel's out-of-memory killer; h"
    assert death_line(-signal.SIGTERM, b"", CAP, "h") == "terminated"  # before the command's own handler was set
    assert death_line(-signal.SIGABRT, b"x" * 300, CAP, "h").startswith("crashed inside a C library (" + "x" * 97 + "...)")


def _capped(limit: int = 16 * 2**30):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    return apply


@pytest.mark.skipif(not SCRIPT.exists(), reason="needs the installed nrrstore script")
def test_a_capped_command_gives_what_an_uncapped_one_gives(tmp_path: Path) -> None:
    shards = str(ROOT / "data/fashion-mnist/test")
    free = subprocess.run([str(SCRIPT), "inspect", shards, "--json"], capture_output=True, text=True, check=False)
    capped = subprocess.run([str(SCRIPT), "inspect", shards, "--json"], capture_output=True, text=True, check=False,
                            preexec_fn=_capped())
    assert free.returncode == capped.returncode == 0, capped.stderr
    assert json.loads(free.stdout) == json.loads(capped.stdout) and capped.stderr == free.stderr
    usage = subprocess.run([str(SCRIPT), "inspect"], capture_output=True, text=True, check=False, preexec_fn=_capped())
    assert usage.returncode == 2 and usage.stderr.startswith("nrrstore: PATH: missing"), usage.stderr


@pytest.mark.skipif(not SCRIPT.exists(), reason="needs the installed nrrstore script")
def test_a_capped_command_stops_once_on_sigterm_and_a_killed_parent_leaves_no_orphan(tmp_path: Path) -> None:
    work = tmp_path / "w"  # the outputs; the progress logs lie beside it
    work.mkdir()

    def start(out: str) -> tuple[subprocess.Popen, Path]:
        log, env = _progress(tmp_path / out)  # tmp_path/OUT-progress.jsonl
        proc = subprocess.Popen([str(SCRIPT), "teacher", "train", "--in", str(ROOT / "data/fashion-mnist/train"),
                                 "--epochs", "50", "--out", str(work / out)], cwd=work, text=True,
                                stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, preexec_fn=_capped())  # noqa: PLW1509
        return proc, log

    proc, log = start("a.pt")
    rc, err = _stop_when(proc, log, "teacher train", signal.SIGTERM)
    assert rc == 143 and err.strip().splitlines()[-1].startswith("nrrstore: terminated"), err
    assert set(os.listdir(work)) <= {".a.pt.resume"}

    proc, log = start("b.pt")
    _wait_for(proc, lambda: _updates(log, "teacher train") >= 1, 600)
    (child,) = children(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60  # a bound, not a wait: the child ends on its SIGTERM's first check
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "the command outlived its killed parent"


def test_a_silent_c_failure_under_a_cap_is_out_of_memory(monkeypatch) -> None:
    """pyarrow under `ulimit -v 384` ended verify with "internal error: SystemError: error return without
    exception set": an allocation that failed in C without saying so. Under a cap it is named as memory."""
    import nrrstore_cli._common as common

    silent = SystemError("<built-in method read> returned NULL: error return without exception set")
    monkeypatch.setattr(common, "address_space_cap", lambda: CAP)
    assert str(common.out_of_memory(silent)).startswith("out of memory")
    monkeypatch.setattr(common, "address_space_cap", lambda: None)
    assert common.out_of_memory(silent) is None  # without a cap it stays a bug to report


def test_the_interpreters_noise_after_the_commands_own_line_is_dropped(capfd) -> None:
    """Seen under `ulimit -v 304`: the command's one line, then dozens of "Exception ignored ... MemoryError" as
    the interpreter shut down without memory."""
    noisy = ("import os, sys\nos.write(2, b'nrrstore: out of memory; raise the memory limit\\n')\n"
             "for _ in range(30):\n    os.write(2, b'Exception ignored on building sys.unraisablehook arguments:\\n"
             "MemoryError\\n')\nsys.exit(1)\n")
    assert supervise([sys.executable, "-c", noisy], CAP) == 1
    assert capfd.readouterr().err == "nrrstore: out of memory; raise the memory limit\n"
    together = noisy.replace("os.write(2, b'nrrstore: out of memory; raise the memory limit\\n')\n", "").replace(
        "for _ in range(30):\n    os.write(2, b'", "os.write(2, b'nrrstore: out of memory; raise the memory limit\\n' + 30 * b'")
    assert supervise([sys.executable, "-c", together], CAP) == 1  # the line and the noise in one read (seen under load)
    assert capfd.readouterr().err == "nrrstore: out of memory; raise the memory limit\n"
    # The same noise before the command's line: the line still comes through.
    before = noisy.replace("os.write(2, b'nrrstore", "pass  # ").replace("sys.exit(1)", "os.write(2, b'nrrstore: x\\n'); sys.exit(1)")
    assert supervise([sys.executable, "-c", before], CAP) == 1
    assert capfd.readouterr().err == "nrrstore: x\n"


def test_a_crash_after_the_commands_own_line_adds_nothing(capfd) -> None:
    """Seen under `ulimit -v 304`: the command's out-of-memory line, then an abort while the interpreter shut down.
    The line already says why; a warning line does not (the death is still told)."""
    said = "import os\nos.write(2, b'nrrstore: out of memory; raise the memory limit\\n'); os.abort()\n"
    assert supervise([sys.executable, "-c", said], CAP) == 1
    assert capfd.readouterr().err == "nrrstore: out of memory; raise the memory limit\n"
    warned = "import os\nos.write(2, b'nrrstore: warning: slow disk\\n'); os.abort()\n"
    assert supervise([sys.executable, "-c", warned], CAP) == 1
    assert capfd.readouterr().err.splitlines()[1].startswith("nrrstore: crashed inside a C library (SIGABRT)")


def test_a_command_that_cannot_start_is_one_line(capfd) -> None:
    assert supervise(["/nonexistent/nrrstore-child"], CAP) == 1
    err = capfd.readouterr().err
    assert err.startswith("nrrstore: cannot start the command under ulimit -v 300 MiB: ") and err.count("\n") == 1


def test_a_bare_exit_127_keeps_its_code(capfd) -> None:
    assert supervise([sys.executable, "-c", "import os; os._exit(127)"], CAP) == 127
    assert capfd.readouterr().err == ""


def test_a_command_that_talks_on_after_a_library_message_is_shown_whole(capfd) -> None:
    """A mid-run message that looks like a library's last words, then more output: not a death, so once more
    than `HOLD_LIMIT` bytes follow it, everything held is shown and nothing more is held back."""
    from nrrstore_cli.supervise import HOLD_LIMIT

    talk = ("import os\nos.write(2, b'Exception ignored in: <generator>\\n')\n"
            f"for i in range({HOLD_LIMIT // 1000 + 20}):\n    os.write(2, b'x' * 999 + b'\\n')\n"
            "os.write(2, b'bar done\\n')\n")
    assert supervise([sys.executable, "-c", talk], CAP) == 0
    err = capfd.readouterr().err
    assert err.startswith("Exception ignored in: <generator>\n") and err.endswith("bar done\n")
    assert err.count("x" * 999) == HOLD_LIMIT // 1000 + 20
