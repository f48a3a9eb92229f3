"""Where the store's files live, and the few file operations the storage layer needs.

Two roles, one module, so that every path the format touches goes through one place:

- **Locations.** A store or shard is a local path or a URL that fsspec opens (s3://, gs://,
  http(s)://). Every reader asks here, so a store on S3, GCS or an HTTP server reads like a local
  folder; a URL scheme nrrstore cannot handle is refused instead of being written as a local folder
  named ``s3:``; a missing extra, a missing bucket or a denied request is one line naming the URL.
  Local paths (and ``file://`` URLs) use the operating system directly, so local behaviour, speed and
  error messages are those of plain files. The facts (:func:`is_file`, :func:`file_size`,
  :func:`list_files`, :func:`sha256`) and reads take either kind.
- **The local seam.** Component writers write through :func:`~nrrstore.format.atomic.atomic_open`
  into a local (staging) folder; what else they do to files there (make folders, move, remove) goes
  through :func:`make_dirs`, :func:`move`, :func:`remove`, :func:`remove_empty_parents`. These are
  local only and refuse a URL: object stores have no rename, and a remote store is written by staging
  it locally and uploading it with :mod:`nrrstore.format.remote` (manifest last).

Reads are ranged: :func:`read_range` is one request, and :class:`RangeFile` gives pyarrow a seekable
file whose every read is one request (its size comes from the manifest, so not even a HEAD is sent).
Endpoints and credentials come from the usual places: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``..., ``GOOGLE_APPLICATION_CREDENTIALS``, or fsspec's ``FSSPEC_S3_*``/``FSSPEC_GCS_*``
variables (e.g. ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format.atomic import stream_sha256

#: scheme -> (module fsspec needs for it, the nrrstore extra that installs it; None: a base dependency).
SCHEMES: dict[str, tuple[str, str | None]] = {
    "s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "http": ("aiohttp", None), "https": ("aiohttp", None),
}
#: Schemes nrrstore writes to (http servers are read-only).
WRITABLE = ("s3", "gs", "gcs")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
STREAM_BLOCK = 16 << 20
"""Bytes per request while a whole shard is read in order (readahead)."""


class Url(str):
    """A remote location that joins like a Path (``Url("s3://b/st") / "index.parquet"``).

    Deliberately not ``os.PathLike``: handing one to ``open()`` by mistake fails instead of creating a
    local file.
    """

    def __truediv__(self, rel: str) -> Url:
        return Url(f"{self.rstrip('/')}/{rel}")

    @property
    def scheme(self) -> str:
        return self.split("://", 1)[0].lower()

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Url:
        head = self.rstrip("/").rsplit("/", 1)[0]
        return Url(head if "://" in head and head.split("://", 1)[1] else self)

    @property
    def bucket(self) -> str:
        return self.split("://", 1)[1].split("/", 1)[0]


Location = Path | Url
#: What the facts below accept: a `Location`, or a local path or URL as text (parsed by `location`).
AnyPath = Location | str | os.PathLike[str]


class NotFound(NrrError):
    """The file or object does not exist (so callers can say what that means where they are)."""


def is_url(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` has a ``scheme://`` other than ``file://`` (known or not)."""
    m = _SCHEME_RE.match(os.fspath(spec)) if isinstance(spec, (str, os.PathLike)) else None
    return m is not None and m.group(1).lower() != "file"


def location(spec: str | os.PathLike[str]) -> Location:
    """A local `Path` (``file://`` URLs included) or a `Url` of a scheme nrrstore handles."""
    if isinstance(spec, (Path, Url)):
        return spec
    text = os.fspath(spec)
    m = _SCHEME_RE.match(text)
    if not m:
        return Path(text)
    scheme = m.group(1).lower()
    if scheme == "file":
        return Path(text[m.end():] or "/")
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise NrrError(text, f"unsupported URL scheme {scheme}:// (nrrstore reads local paths, file://, {known})")
    if not text[m.end():].strip("/"):
        raise NrrError(text, "URL names no bucket or host")
    return Url(text)


def writable_location(spec: str | os.PathLike[str]) -> Location:
    """`location` for an output: http(s) is refused (read-only)."""
    loc = location(spec)
    if isinstance(loc, Url) and loc.scheme not in WRITABLE:
        raise NrrError(loc, f"{loc.scheme}:// is read-only here; write to a local folder, s3:// or gs://")
    return loc


def object_path(url: Url) -> str:
    """How the URL's filesystem names it (``bucket/key`` for object stores)."""
    return filesystem(url)[1]


def filesystem(url: Url) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path it knows it by; a missing extra is one line."""
    module, extra = SCHEMES[url.scheme]
    try:
        from fsspec.core import url_to_fs

        # no listings cache: nrrstore writes and then reads the same prefixes, and must see what is there now
        return url_to_fs(str(url), use_listings_cache=False)
    except ImportError:
        how = f"pip install 'nrrstore[{extra}]'" if extra else f"pip install {module}"
        raise NrrError(url, f"{url.scheme}:// needs the {module} package: {how}") from None


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Report a failed remote operation as one `NrrError` line naming ``url``."""
    try:
        yield
    except NrrError:
        raise
    except FileNotFoundError as exc:
        raise NotFound(url, _not_found(url, exc)) from None
    except PermissionError as exc:
        raise NrrError(url, f"access denied ({_detail(exc)}); check the credentials and the bucket's "
                            "permissions") from None
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, gcsfs: each has its own error types
        unless_out_of_memory(exc)
        raise NrrError(url, f"remote request failed: {type(exc).__name__}: {_detail(exc)}") from None


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _not_found(url: str, exc: FileNotFoundError) -> str:
    text = _detail(exc)
    if "bucket" in text.lower():
        return f"bucket {Url(url).bucket!r} does not exist"
    return "no such file or object"


# -- reading -------------------------------------------------------------------------------------------
def read_bytes(loc: Location) -> bytes:
    """The whole file (one request when remote)."""
    if isinstance(loc, Path):
        return loc.read_bytes()
    fs, path = filesystem(loc)
    with remote_errors(loc):
        return fs.cat_file(path, start=0)  # a range from 0: one GET (without it s3fs first asks for the size)


def read_range(loc: Location, start: int, size: int) -> bytes:
    """Bytes ``[start, start+size)`` of a file: one seek and read, or one range request."""
    if isinstance(loc, Path):
        with open(loc, "rb") as f:
            f.seek(start)
            data = f.read(size)
    else:
        fs, path = filesystem(loc)
        with remote_errors(loc):
            data = fs.cat_file(path, start=start, end=start + size) if size else b""
        if len(data) > size:  # a server that ignored the range sent everything
            data = data[start:start + size]
    if len(data) != size:
        raise NrrError(loc, f"truncated: wanted {size} bytes at {start}, got {len(data)}")
    return data


def open_read(loc: Location) -> IO[bytes]:
    """A file to read in order (remote: readahead in large ranged requests)."""
    if isinstance(loc, Path):
        return open(loc, "rb")
    fs, path = filesystem(loc)
    with remote_errors(loc):
        return fs.open(path, "rb", block_size=STREAM_BLOCK, cache_type="readahead")


class RangeFile(io.RawIOBase):
    """A read-only seekable remote file whose every read is one range request (for pyarrow).

    ``size`` (from the manifest) saves the request that would ask for it. Unbuffered on purpose: pyarrow
    asks for exactly the footer and the column chunks it needs, and a block cache would fetch more.
    """

    def __init__(self, url: Url, size: int | None = None) -> None:
        super().__init__()
        self.url, self.pos = url, 0
        self.size = file_size(url) if size is None else int(size)
        self.requests = 0
        self._last: tuple[int, bytes] = (0, b"")  # the last range read: pyarrow re-reads inside the footer

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n:
            start, data = self._last
            if not start <= self.pos or self.pos + n > start + len(data):
                start, data = self._last = (self.pos, read_range(self.url, self.pos, n))
                self.requests += 1
            buffer[:n] = data[self.pos - start:self.pos - start + n]
            self.pos += n
        return n


def table_source(loc: Location, size: int | None = None) -> Any:
    """What pyarrow opens for a Parquet file: the path itself, or a `RangeFile`."""
    return loc if isinstance(loc, Path) else RangeFile(loc, size)


def zarr_source(loc: Location) -> Any:
    """What ``zarr.open_array`` opens: a local path, or an fsspec store for a URL."""
    if isinstance(loc, Path):
        return str(loc)
    from zarr.storage import FsspecStore

    filesystem(loc)  # a missing extra: one line
    with remote_errors(loc):
        return FsspecStore.from_url(str(loc), read_only=True)


# -- facts ---------------------------------------------------------------------------------------------
def file_size(spec: AnyPath) -> int:
    loc = location(spec)
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = filesystem(loc)
    with remote_errors(loc):
        return int(fs.size(path))


def is_file(spec: AnyPath) -> bool:
    loc = location(spec)
    if isinstance(loc, Path):
        return loc.is_file()
    fs, path = filesystem(loc)
    with remote_errors(loc):
        return bool(fs.isfile(path))


def can_list(spec: AnyPath) -> bool:
    """Whether the files under ``loc`` can be listed (local folders and object stores; not http)."""
    loc = location(spec)
    return isinstance(loc, Path) or loc.scheme in WRITABLE


def list_files(spec: AnyPath) -> dict[str, int]:
    """Every file under ``root`` (recursively): relative ``/``-separated path -> size in bytes.

    Sorted folder by folder (iterating gives the paths in that order). Only where `can_list`; an
    absent folder or prefix has no files.
    """
    root = location(spec)
    if isinstance(root, Path):
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    fs, path = filesystem(root)
    with remote_errors(root):
        found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return {k[len(base):]: int(v.get("size") or 0) for k, v in sorted(found.items())
            if k.startswith(base) and v.get("type", "file") == "file"}


def list_dir(spec: AnyPath) -> list[tuple[str, bool]]:
    """``(name, is_file)`` of the entries directly in ``loc``, sorted by name."""
    loc = location(spec)
    if isinstance(loc, Path):
        return sorted((p.name, p.is_file()) for p in loc.iterdir())
    fs, path = filesystem(loc)
    with remote_errors(loc):
        entries = fs.ls(path, detail=True)
    return sorted((e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type") == "file") for e in entries)


def sha256(spec: AnyPath, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in order."""
    loc = location(spec)
    guard = remote_errors(loc) if isinstance(loc, Url) else contextlib.nullcontext()
    with open_read(loc) as f, guard:
        return stream_sha256(f, chunk)


# -- the local seam: what writers do to the files of a local (staging) folder ---------------------------
def _local(path: str | os.PathLike[str]) -> Path:
    """``path`` as a local `Path`; a URL is refused (object stores are written by `remote`'s upload)."""
    loc = location(path)
    if isinstance(loc, Url):
        raise NrrError(loc, "local file operation on a URL (remote stores are staged locally, then uploaded)")
    return loc


def make_dirs(path: str | os.PathLike[str]) -> None:
    _local(path).mkdir(parents=True, exist_ok=True)


def move(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` (a file, or a folder onto a missing or empty one)."""
    os.replace(_local(src), _local(dst))


def move_folder_over(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the folder ``src`` to ``dst``, replacing whatever ``dst`` holds; nothing when ``src`` is gone (moved
    already), so an interrupted install can simply be rerun."""
    if _local(src).is_dir():
        remove(dst)
        make_dirs(_local(dst).parent)
        move(src, dst)


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file or a whole folder; a missing one is not an error."""
    p = _local(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_empty_parents(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Delete the folders above ``path`` that are left empty, up to (not including) ``root``."""
    top = _local(root)
    for parent in _local(path).parents:
        if parent == top or top not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone): the folders above are not empty either
            return
