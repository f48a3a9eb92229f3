"""The `nrrstore` entry point: under an address-space cap (``ulimit -v``), a small parent watches the command.

Why: with a cap, an allocation can fail inside a C library, where Python never sees it. glibc ends the process
when it cannot allocate a new thread's local storage (exit 127) and C++ code aborts on ``std::bad_alloc``
(SIGABRT), each with its own message and no nrrstore line. Only another process can then say what happened, so
under a cap the command runs in a child: the parent forwards its stderr, holds back those libraries' own
messages and prints one ``nrrstore:`` line in their place, naming the limit and the command's size options.
Without a cap the command runs in this process, as it always did (no child, no pipe).

This module imports nothing heavy: the parent must start and stay small under the very cap it watches.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType

SUPERVISOR_FD_ENV = "NRRSTORE_SUPERVISOR_FD"
"""Set in the child: the pipe on which it sends the parent its memory hint (and which marks it a child)."""

RAISE_LIMIT = "raise the memory limit (ulimit -v, or the container's)"
"""The memory hint of a command that has no size options (or has not parsed them yet)."""

_MEMORY_MESSAGES = (b"cannot allocate memory", b"Cannot allocate memory", b"std::bad_alloc", b"out of memory",
                    b"Program is Terminated", b"failed to allocate", b"memory regions")
"""What C libraries print when an allocation fails (glibc's dynamic loader, libstdc++, OpenBLAS)."""

_LIBRARY_MESSAGES = (*_MEMORY_MESSAGES, b"terminate called", b"Fatal glibc error", b"Fatal Python error",
                     b"Exception ignored")
"""Text that no nrrstore code prints: a C library's (or the interpreter's) last words, held back from the user's
terminal. Shown after all when the command ends well, or fails without its own line: nothing is lost."""

_INTERPRETER_NOISE = ("Exception ignored", "MemoryError")
"""Lines the interpreter prints as it shuts down without memory: not the message to quote."""
HOLD_LIMIT = 64 * 1024
"""Held-back bytes past which the child is taken to be alive and talking: they are shown, nothing more is held."""
_CRASHES = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS}
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGCONT, signal.SIGWINCH)
"""Passed on to the child, which has its own process group: the stop signals, job control, a resized terminal."""
_STOPPED = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
_PR_SET_PDEATHSIG = 1


def address_space_cap() -> int | None:
    """The soft address-space limit in bytes, or None when there is none (or no such limit: not POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def main() -> None:
    """Run the command here, or, under a cap and from the installed script, in a watched child."""
    cap = address_space_cap()
    script = sys.argv[0]
    if cap is None or SUPERVISOR_FD_ENV in os.environ or not os.path.isfile(script):
        from nrrstore_cli.main import main as run_here

        run_here()
        return
    sys.exit(supervise([sys.executable, script, *sys.argv[1:]], cap))


def _before_exec() -> Callable[[], None]:
    """What the child runs before exec: its own process group (signals to ours reach it once, through us),
    and a SIGTERM when the parent dies, so a parent killed outright leaves no orphan running. ``prctl`` is
    looked up here, before the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    parent = os.getpid()

    def run() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)

    return run


def _child_env(hint_fd: int) -> dict[str, str]:
    env = dict(os.environ, **{SUPERVISOR_FD_ENV: str(hint_fd)})
    if os.isatty(2):  # the child's stderr is our pipe: its progress bars still go to a terminal
        env.setdefault("TTY_COMPATIBLE", "1")
        env.setdefault("TTY_INTERACTIVE", "1")
        with contextlib.suppress(OSError):
            env.setdefault("COLUMNS", str(os.get_terminal_size(2).columns))
    return env


def supervise(command: list[str], cap: int) -> int:
    """Run ``command`` (an nrrstore command line) in a child and return the exit code to leave with.

    The child runs in its own process group, so a signal sent to this group (Ctrl-C, `timeout`) reaches it
    once, through this process. Its stderr passes through unchanged except for C libraries' messages, which
    are replaced by one line when the child dies of them.
    """
    hint_r, hint_w = os.pipe()
    err_r, err_w = os.pipe()
    child: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not child:
            pending.append(signum)
            return
        if signum == signal.SIGTSTP:  # Ctrl-Z: stop the command, then ourselves, as a shell expects
            child[0].send_signal(signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        child[0].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        try:
            child.append(subprocess.Popen(command, stderr=err_w, pass_fds=(hint_w,), env=_child_env(hint_w),
                                          preexec_fn=_before_exec()))  # noqa: PLW1509 - this process has no threads
        except OSError as exc:  # no memory for a process under the cap, most likely
            _write(f"nrrstore: cannot start the command under ulimit -v {cap // 2**20} MiB: "
                   f"{exc.strerror or exc}; {RAISE_LIMIT}\n".encode())
            return 1
        finally:
            os.close(hint_w)
            os.close(err_w)
        for signum in pending:
            forward(signum, None)
        held, spoke = _relay(err_r)
        code = child[0].wait()
        hint = _read_hint(hint_r)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(err_r)
        os.close(hint_r)
    line = death_line(code, bytes(held), cap, hint or RAISE_LIMIT)
    status = 1 if code == 127 and held or -code in _CRASHES else code if code >= 0 else 128 - code
    if spoke and status != 0:  # the command said why it failed; what followed is the interpreter's last noise
        return status
    if line is None:
        _write(held)
    else:
        _write(f"nrrstore: {line}\n".encode())
    return status


def _read_hint(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    except BlockingIOError:
        return ""


def _relay(fd: int) -> tuple[bytearray, bool]:
    """Copy the child's stderr to ours until it closes. From the first C library message on, hold the rest back
    but for the command's own ``nrrstore:`` lines. Returns what was held and whether the command spoke."""
    held, spoke, passing = bytearray(), False, False
    while chunk := os.read(fd, 65536):
        if len(held) > HOLD_LIMIT:  # the command lives on after that text: it was no last word; show it all
            _write(held)
            held, passing = bytearray(), True
        start = None if passing else _library_start(chunk) if not held else 0
        if start is None:
            _write(chunk)
            spoke = spoke or _says_why(chunk)
            continue
        _write(chunk[:start])
        spoke = spoke or _says_why(chunk[:start])  # the command's line and the noise after it in one read
        for line in chunk[start:].splitlines(keepends=True):
            if line.startswith(b"nrrstore:"):
                _write(line)
                spoke = spoke or _says_why(line)
            else:
                held += line
    return held, spoke


def _says_why(text: bytes) -> bool:
    """Whether ``text`` holds one of the command's own lines other than a warning (its reason for ending)."""
    return any(line.startswith(b"nrrstore:") and not line.startswith((b"nrrstore: warning:", b"nrrstore: note:"))
               for line in text.splitlines())


def _library_start(chunk: bytes) -> int | None:
    """Where a C library's message begins in ``chunk`` (the start of its line), or None if none does."""
    if not any(m in chunk for m in _LIBRARY_MESSAGES):  # the common case, without splitting into lines
        return None
    start = 0
    for line in chunk.splitlines(keepends=True):
        if not line.startswith(b"nrrstore:") and any(m in line for m in _LIBRARY_MESSAGES):
            return start
        start += len(line)
    return None


def _write(data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(2, view):]
        except BrokenPipeError:
            return


def death_line(code: int, held: bytes, cap: int, hint: str) -> str | None:
    """The one line for a child that died inside a C library (None when it ended otherwise): exit 127 after a
    library's message (glibc), a crash signal, or any other signal it did not handle (the kernel's SIGKILL)."""
    limit = f"ulimit -v {cap // 2**20} MiB"
    lines = [line.strip() for line in held.decode("utf-8", "replace").splitlines() if line.strip()]
    said = next((line for line in lines if not line.startswith(_INTERPRETER_NOISE)), lines[0] if lines else "")
    said = said if len(said) <= 100 else said[:97] + "..."
    if code == 127 and held or code < 0 and -code in _CRASHES:
        what = said or signal.Signals(-code).name if code < 0 else said
        if any(m in held for m in _MEMORY_MESSAGES) or code == 127:
            return f"out of memory inside a C library ({what}) under {limit}; {hint}"
        return f"crashed inside a C library ({what}) under {limit}, most likely out of memory; {hint}"
    if code < 0 and -code in _STOPPED:  # stopped before its own handlers were installed
        return _STOPPED[signal.Signals(-code)]
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}, most likely by the kernel's out-of-memory killer; {hint}"
    return None
