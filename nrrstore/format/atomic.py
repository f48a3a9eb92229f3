"""Atomic file creation: write under a temporary name in the same folder, fsync, then rename.

A reader (or a crash) therefore sees either no file or a complete one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

TMP_PREFIX = ".tmp-"


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}")


def refuse_link(path: str | os.PathLike[str]) -> None:
    """A temporary or work file of nrrstore's own must not be a link someone planted (in a shared folder anyone
    can): following it would write into, or delete, whatever it points at."""
    if os.path.islink(path):
        from nrrstore.errors import NrrError

        raise NrrError(path, "a symbolic link stands where nrrstore keeps its own temporary or work files; it is "
                             "never followed: remove the link")


def own_path(path: Path) -> Path:
    """``path`` after `refuse_link`: the name of a temporary or work folder nrrstore is about to use."""
    refuse_link(path)
    return path


def mkdir_own(path: str | os.PathLike[str], parents: bool = True) -> None:
    """Create (or reuse, for a resume) a work folder of nrrstore's own, refusing a link in its place."""
    refuse_link(path)
    Path(path).mkdir(parents=parents, exist_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears under its name only if the block completes."""
    path = Path(path)
    tmp = tmp_name(path)
    refuse_link(tmp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a killed run's leftover (a link was refused above; unlink never follows one)
    # Not a `with`: closed before the rename below, or by discard(), which also deletes the temporary file.
    # Created exclusively and never through a link: a link planted after the check makes this fail, not follow.
    f = open(tmp, "wb", opener=_exclusive)  # noqa: SIM115 - see above
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        discard(f, tmp)
        raise


def _exclusive(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def discard(f: BinaryIO, tmp: Path) -> None:
    """Close and delete a half-written temporary file, whatever state the disk is in.

    Closing flushes Python's buffer, which fails again on a full disk: that error must not stop
    the deletion, or the leftover keeps the disk full.
    """
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def stream_sha256(f: IO[bytes], chunk: int = 1 << 20) -> str:
    """sha256 of what is left in a binary stream, read in chunks (the one hashing loop of nrrstore)."""
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a local file (`nrrstore.format.fs.sha256` also reads URLs)."""
    with open(path, "rb") as f:
        return stream_sha256(f, chunk)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` (after resolving links): outputs must not land in inputs."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


class CommitOrAbort:
    """A writer used in ``with``: ``close()`` commits it when the block ends normally, ``abort()`` discards
    it when the block raises, so no caller can leave a half-written file that looks finished."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
