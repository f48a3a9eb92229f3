"""One exception type for every user-facing failure.

Why one type: the CLI turns any `NrrError` into a single line ``nrrstore: <path>: <problem>`` and a
non-zero exit, so every layer can raise without knowing how it will be shown. Operating-system errors
(a full disk, a read-only folder) become `NrrError`s naming the output the user gave, through
:func:`os_errors_name`, instead of an internal temporary name or no name at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class NrrError(Exception):
    """A problem with user input or a store, tied to the file it concerns."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else path_text(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


_MEMORY_TEXT = ("cannot allocate memory", "can't allocate memory", "out of memory", "malloc of size",
                "std::bad_alloc", "failed to launch worker thread", "can't start new thread")
"""How libraries word memory running out; a thread that cannot start is the same shortage (its stack)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the machine's memory running out, whatever library raised it (pyarrow's "malloc of size
    64 failed", torch's allocator, zarr wrapping a MemoryError): such a failure says nothing of the file being
    read, so readers must not report it as a corrupt or unreadable file."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError) or any(t in str(seen).lower() for t in _MEMORY_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unless_out_of_memory(exc: BaseException) -> None:
    """Re-raise ``exc`` when it is memory running out (see `is_out_of_memory`): call it first in a broad ``except``
    that turns a library's failure into "unreadable file"."""
    if is_out_of_memory(exc):
        raise exc


class NrrWarning(UserWarning):
    """Something the user should know that does not stop the job (the CLI prints it as one line)."""


class FormatVersionError(NrrError):
    """A store written by an incompatible (unknown major) format version."""


class ResumeMismatchError(NrrError):
    """An existing partial output was made with different arguments."""


class LabelsExistError(NrrError):
    """A store already holds labels and the call did not ask to replace them (the fix is ``--overwrite``)."""


def path_text(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A file name as text that always prints and encodes: bytes that are not UTF-8 become ``\\xNN``.

    Linux file names are bytes; Python decodes the ones that are not UTF-8 (a Latin-1 ``caf\\xe9.jpg``)
    to lone surrogates, which crash any later ``encode("utf-8")`` (a message, a JSON manifest). This
    is the documented safe form nrrstore prints and records for such names.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


def os_problem(exc: OSError) -> str:
    """A short lower-case description of an operating-system error (``no space left on device``)."""
    if exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def os_errors_name(path: str | os.PathLike[str]) -> Iterator[None]:
    """Report an `OSError` raised inside the block as an `NrrError` naming ``path``.

    Used around the writing phase of a command with the output the user gave: the error then names
    that output (``out/store: no space left on device``), not a hidden temporary file, and pyarrow's
    or zarr's errors (which carry no file name) get one too. Readers of inputs raise their own
    `NrrError`s naming the input, which pass through unchanged.
    """
    try:
        yield
    except NrrError:
        raise
    except OSError as exc:
        raise NrrError(path, os_problem(exc)) from exc


def staged_as(exc: NrrError, staging: str | os.PathLike[str], out: str | os.PathLike[str]) -> NrrError:
    """An error about a hidden staging folder, told about the output the user gave instead."""
    if exc.path is not None and exc.path == path_text(staging):
        return type(exc)(out, exc.problem)
    return exc
