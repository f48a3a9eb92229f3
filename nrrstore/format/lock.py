"""Advisory locks on outputs: one nrrstore process writes a given store, shard folder or file at a time.

Why: two runs writing one output race on the same temporary and work folders (``.tmp-<name>``,
``.work-<name>``, ``STORE/.relabel``) and crash half-way. Every writer therefore holds an exclusive
``fcntl.flock`` on the sibling file ``.lock-<name>`` while it works; the second writer is refused
with the holder's pid, read from that file. The kernel drops a lock when its process dies, so the
lock of a killed run is simply taken over by the next one. Locks are re-entrant within a process
(``distill`` then ``relabel`` on the same store), and the lock file is removed on release.

On systems without ``fcntl`` (Windows) locking is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from nrrstore.errors import NrrError, os_problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]  # the module or None: without it, locking is skipped

LOCK_PREFIX = ".lock-"
_held: dict[str, list[int]] = {}  # lock file -> [fd, depth] held by this process


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``.lock-<name>`` beside it (the output itself may not exist yet).

    Symlinks are resolved first, so two names of one output (``ln -s s t``) share one lock.
    """
    t = Path(os.path.realpath(target))
    return t.with_name(f"{LOCK_PREFIX}{t.name}")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of ``target`` for the block; `NrrError` if another live process holds it."""
    if fcntl is None:
        yield
        return
    path = lock_path(target)
    key = os.fspath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, target)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it, so no one can lock a file that is about to vanish
        os.close(fd)


def _acquire(path: Path, target: str | os.PathLike[str]) -> int:
    while True:
        try:
            # Never through a link: a planted `.lock-x -> victim` would have us write our pid into the victim.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise NrrError(target, f"parent folder {Path(target).parent} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NrrError(path, "the lock file is a symbolic link, which nrrstore never makes; remove it "
                                     "if you trust this folder") from None
            raise NrrError(target, os_problem(exc)) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a FIFO, a device, or a hard link to another file
            os.close(fd)
            raise NrrError(path, "the lock file is not a plain file of its own (a link or a special file), "
                                 "which nrrstore never makes; remove it if you trust this folder")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise NrrError(target, f"another nrrstore process (pid {pid}) is writing here") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it between our open and our lock: lock the new one
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # a full disk: the lock holds without the pid
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "?"
