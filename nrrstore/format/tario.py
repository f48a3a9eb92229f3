"""Deterministic WebDataset tar shards: writing with member offsets, and strict streaming reading.

Writing: members of a sample are sorted by extension, mtime/uid/gid are 0 and names are plain, so the
same samples always give the same bytes; the byte offset of each member's data is returned so a key
index can serve random access with one seek. Reading groups consecutive members by key the way
webdataset does (key = member name up to the first dot of its base name) and turns every kind of tar
damage into an `NrrError` naming the shard.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.atomic import CommitOrAbort, atomic_open


@dataclass(frozen=True)
class MemberSpan:
    """Where a member's bytes lie inside its shard."""

    offset: int
    size: int


class TarShardWriter(CommitOrAbort):
    """Write one shard atomically: it exists under its final name only after `close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ctx = atomic_open(self.path)
        self._file = self._ctx.__enter__()
        # Not a `with`: the writer owns the archive across add() calls, and close() or abort() closes it.
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 - see above
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> dict[str, MemberSpan]:
        """Append one sample; returns each extension's span in the shard."""
        spans: dict[str, MemberSpan] = {}
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            # addfile leaves tar.offset at the end of the 512-byte-padded data block.
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            spans[ext] = MemberSpan(self._tar.offset - padded, len(data))
        self.count += 1
        return spans

    def close(self) -> None:
        self._tar.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the partial shard (its temporary file is removed)."""
        with contextlib.suppress(Exception):  # we are discarding the file anyway
            self._tar.close()
        with contextlib.suppress(RuntimeError):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc.seg.png"`` -> (``"dir/abc"``, ``"seg.png"``), the webdataset convention."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


def iter_tar_samples(
    source: str | os.PathLike[str] | IO[bytes], where: str | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample of a tar stream, in file order.

    Members sharing a key must be consecutive (as webdataset requires); a key seen again after
    another key is reported as a duplicate.
    """
    where = where or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else None)
    close = False
    if isinstance(source, (str, os.PathLike)):
        try:
            fileobj: IO[bytes] = fs.open_read(fs.location(source))
        except FileNotFoundError:
            raise NrrError(where, "no such file") from None
        except IsADirectoryError:
            raise NrrError(where, "is a directory, not a tar shard") from None
        close = True
    else:
        fileobj = source
    seen: set[str] = set()
    cur_key: str | None = None
    cur: dict[str, bytes] = {}
    try:
        seekable = close  # opened here (local or remote): random-access mode, so the end marker can be checked
        try:
            # entered by `with tar:` below; opened apart so that only its own ReadError reads "not a readable tar"
            tar = tarfile.open(fileobj=fileobj, mode="r:*" if seekable else "r|*")  # noqa: SIM115 - see above
        except tarfile.ReadError as exc:
            raise NrrError(where, f"not a readable tar file ({exc})") from None
        with tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if key.startswith("__") or not ext:  # webdataset's own metadata members
                    continue
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise NrrError(where, f"truncated tar: member {info.name} is cut short")
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, cur
                    if key in seen:
                        raise NrrError(where, f"duplicate key {key!r} (members of a sample must be consecutive and keys unique)")
                    seen.add(key)
                    cur_key, cur = key, {}
                if ext in cur:
                    raise NrrError(where, f"duplicate member {info.name}")
                cur[ext] = data
            if seekable:
                # tarfile ends silently when a shard is cut at a header boundary; a complete
                # archive has a zero end-of-archive block right after its last member.
                assert tar.fileobj is not None
                tar.fileobj.seek(tar.offset)
                end = tar.fileobj.read(tarfile.BLOCKSIZE)
                if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
                    raise NrrError(where, "truncated tar: no end-of-archive marker after the last member")
            if cur_key is not None:
                yield cur_key, cur
    except (tarfile.ReadError, tarfile.StreamError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise NrrError(where, f"corrupt or truncated tar ({exc or type(exc).__name__})") from None
    finally:
        if close:
            fileobj.close()
