"""A local disk cache of a remote store's shards, so that the second epoch reads no shard bytes remotely.

Why: the loader reads a remote store (s3://, gs://, http(s)://) by range requests, one per partner group,
and without a cache every epoch pays them again (mosaicml-streaming and litdata keep a local copy the same
way). Opt-in: :func:`shard_cache` gives one when a folder is named (argument or ``NRRSTORE_CACHE_DIR``).

- **Key.** An entry is ``ROOT/<manifest digest>/<shard path>`` (``ROOT/3f2a.../images/shard-000000.tar``):
  a changed store (relabelled, rewritten, a shard replaced) has another manifest and so other entries; the
  old ones are never read for it and age out by the LRU below. Every entry is also checked against the
  manifest's size and sha256 once per process before it is trusted: a corrupt or truncated entry (a disk
  error, a hand edit) is fetched again, never served.
- **Fill.** The whole shard is fetched (in ``fs.STREAM_BLOCK`` range requests, sizes from the manifest) into
  ``.tmp-<pid>-<name>`` beside the entry, checked, and renamed into place (``os.replace``): readers see no entry
  or a complete one.
- **Processes.** DataLoader workers and DDP ranks of one machine may share a cache. A fill holds the
  entry's lock (``fcntl.flock`` on ``.lock-<name>`` beside it): one process downloads, the others wait and
  then read its entry. Reading a complete entry takes no lock: a reader holds the file open, and an entry
  deleted meanwhile stays readable through that handle (POSIX). Without ``fcntl`` (Windows) fills are not
  locked: two processes may download the same shard (each into its own temporary file), and the renames
  still leave one complete entry.
- **Cap.** After each fill the entries (all digests together) are evicted least recently used first
  (every read touches its entry's mtime) until their total is at most ``max_bytes``. The entry just
  filled is never evicted by its own fill, and entries another process is filling are skipped. So a
  cap smaller than one shard still works: each shard is kept until the next fill evicts it (the total
  then exceeds the cap by that one entry), at the price of fetching again whenever the shards alternate.
  Leftover temporary files of killed fills are removed on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nrrstore.errors import NrrError, os_problem
from nrrstore.format import fs
from nrrstore.format.atomic import stream_sha256
from nrrstore.format.manifest import FileEntry
from nrrstore.units import human_bytes, parse_bytes

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]  # the module or None: without it, fills are not locked

DIR_ENV = "NRRSTORE_CACHE_DIR"
SIZE_ENV = "NRRSTORE_CACHE_SIZE"
DEFAULT_CACHE_BYTES = 20 * 2**30
"""The default cap (20 GiB): a few ImageNet-scale stores' shards, on any training machine's scratch disk."""
TMP_PREFIX = ".tmp-"
LOCK_PREFIX = ".lock-"
_DIGEST_RE = re.compile(r"^[0-9a-f]{16,128}$")


def shard_cache(cache_dir: str | os.PathLike[str] | None = None,
                cache_bytes: int | str | None = None) -> ShardCache | None:
    """The cache the arguments ask for, else the one ``NRRSTORE_CACHE_DIR`` (and ``NRRSTORE_CACHE_SIZE``)
    name, else None (no cache). ``cache_bytes``: a number of bytes or a size such as ``"20GiB"``."""
    if cache_bytes is not None:
        cache_bytes = parse_bytes(cache_bytes, "cache size")  # refused even when no cache is asked for
    if cache_dir is None:
        cache_dir = os.environ.get(DIR_ENV) or None
    if cache_dir is None:
        return None
    if cache_bytes is None:
        cache_bytes = os.environ.get(SIZE_ENV) or DEFAULT_CACHE_BYTES
    return ShardCache(cache_dir, cache_bytes)


class ShardCache:
    """Verified local copies of remote shards under ``root``, at most ``max_bytes`` of them (module docstring).

    Picklable (its root and cap): DataLoader workers get the same cache and check its entries themselves.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int | str = DEFAULT_CACHE_BYTES) -> None:
        loc = fs.location(root)
        if isinstance(loc, fs.Url):
            raise NrrError(loc, "the shard cache must be a local folder")
        self.root = Path(os.path.abspath(loc))
        self.max_bytes = parse_bytes(max_bytes, "cache size")
        if self.max_bytes < 0:
            raise NrrError(None, f"cache size must be >= 0 bytes, got {max_bytes!r}")
        self._verified: dict[str, tuple[int, int, int]] = {}  # entry -> (dev, inode, size) checked by this process

    def __repr__(self) -> str:
        return f"ShardCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def __getstate__(self) -> dict[str, Any]:  # each process checks entries itself
        return {**self.__dict__, "_verified": {}}

    # -- reading ------------------------------------------------------------------------------------
    def entry_path(self, key: str, rel: str) -> Path:
        """Where the shard ``rel`` of the store whose manifest digest is ``key`` is kept."""
        if not _DIGEST_RE.match(key):
            raise NrrError(None, f"shard cache key {key!r} is not a manifest digest")
        if rel.startswith("/") or ".." in rel.split("/"):
            raise NrrError(rel, "shard path leaves the store")
        return self.root / key / rel

    def read_range(self, url: fs.Url, key: str, entry: FileEntry, start: int, size: int) -> bytes:
        """Bytes ``[start, start+size)`` of the shard ``url`` (listed in the manifest as ``entry``), from its
        entry, which is fetched first when missing or not the manifest's bytes."""
        with self.open(url, key, entry) as f:
            f.seek(start)
            data = f.read(size)
        if len(data) != size:
            raise NrrError(url, f"truncated: wanted {size} bytes at {start}, got {len(data)}")
        return data

    @contextlib.contextmanager
    def open(self, url: fs.Url, key: str, entry: FileEntry) -> Iterator[IO[bytes]]:
        """The entry of ``url`` open for reading, fetched and checked first as needed (one fill at a time
        per entry across processes); its mtime is touched (the LRU's clock)."""
        path = self.entry_path(key, entry.path)
        f = self._open_checked(path, entry)
        if f is None:
            f = self._fill(url, path, entry)
        with f:
            with contextlib.suppress(OSError):
                os.utime(f.fileno())
            yield f

    def _open_checked(self, path: Path, entry: FileEntry) -> IO[bytes] | None:
        """The complete entry open, or None when it is missing or not the manifest's bytes."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise NrrError(path, f"cannot read the cached shard: {os_problem(exc)}") from None
        if self._trusted(f, path, entry):
            return f
        f.close()
        return None

    def _trusted(self, f: IO[bytes], path: Path, entry: FileEntry) -> bool:
        """Whether the open entry holds the manifest's bytes (hashed once per process and file)."""
        st = os.fstat(f.fileno())
        ident = (st.st_dev, st.st_ino, st.st_size)
        if self._verified.get(str(path)) == ident:
            return True
        if st.st_size != entry.bytes:
            return False
        digest = stream_sha256(f)
        f.seek(0)
        if digest != entry.sha256:
            return False
        self._verified[str(path)] = ident
        return True

    def _fill(self, url: fs.Url, path: Path, entry: FileEntry) -> IO[bytes]:
        """Fetch the entry under its lock (or read the one another process made meanwhile), then evict."""
        with _entry_lock(path):
            f = self._open_checked(path, entry)  # another process may have filled it while we waited
            if f is None:
                f = self._download(url, path, entry)
        try:
            self._evict(keep=path)
        except BaseException:
            f.close()
            raise
        return f

    def _download(self, url: fs.Url, path: Path, entry: FileEntry) -> IO[bytes]:
        """``url`` into a temporary file beside the entry, checked against the manifest, renamed into place; returned open."""
        tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")  # per process: see _entry_lock without fcntl
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # (the lock made it, where there are locks)
            f = open(tmp, "w+b")  # noqa: SIM115 - returned open (renamed under it), or closed below
        except OSError as exc:
            raise NrrError(path, f"cannot write the shard cache: {os_problem(exc)}") from None
        try:
            h = hashlib.sha256()
            for start in range(0, entry.bytes, fs.STREAM_BLOCK):
                block = fs.read_range(url, start, min(fs.STREAM_BLOCK, entry.bytes - start))
                h.update(block)
                f.write(block)
            if f.tell() != entry.bytes or h.hexdigest() != entry.sha256:
                raise NrrError(url, "does not match the store's manifest (size or sha256): the store changed since "
                                    "it was opened, or the object is corrupt; open the store again, or verify it")
            f.flush()
            os.replace(tmp, path)
            st = os.fstat(f.fileno())
            self._verified[str(path)] = (st.st_dev, st.st_ino, st.st_size)
            f.seek(0)
            return f
        except BaseException as exc:
            f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise NrrError(path, f"cannot write the shard cache: {os_problem(exc)}") from None
            raise

    # -- the cap -----------------------------------------------------------------------------------
    def entries(self) -> list[tuple[Path, int, float]]:
        """Every complete entry: ``(path, bytes, mtime)``, all digests."""
        out = []
        for p in self._files():
            if not p.name.startswith((TMP_PREFIX, LOCK_PREFIX)):
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    out.append((p, st.st_size, st.st_mtime))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def _files(self) -> list[Path]:
        """The files in the digest folders (nothing else under ``root`` is ever touched)."""
        out: list[Path] = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for d in sorted(self.root.iterdir()):
                if _DIGEST_RE.match(d.name) and d.is_dir():
                    with contextlib.suppress(FileNotFoundError):
                        out.extend(p for p in d.rglob("*") if p.is_file())
        return out

    def _evict(self, keep: Path) -> None:
        """Remove least recently used entries until the total is within the cap (never ``keep``, never an
        entry being filled); stale temporary files of killed fills go too."""
        for p in self._files():
            if p.name.startswith(TMP_PREFIX) and fcntl is not None:
                entry = p.with_name(p.name[len(TMP_PREFIX):].partition("-")[2])
                with _entry_lock(entry, wait=False) as held:
                    if held:  # no one is filling it: a killed fill's leftover
                        p.unlink(missing_ok=True)
                if held:
                    fs.remove_empty_parents(p, self.root)  # once the lock file is gone too
        found = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in found)
        for p, size, _ in found:
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            with _entry_lock(p, wait=False) as held:
                if held:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            if held:
                total -= size
                self._verified.pop(str(p), None)
                fs.remove_empty_parents(p, self.root)  # once the lock file is gone too

    def describe(self) -> str:
        """``3 shards, 1.2 GB of 21.5 GB in /scratch/cache`` (for messages)."""
        found = self.entries()
        return (f"{len(found)} shard(s), {human_bytes(sum(s for _, s, _ in found))} of {human_bytes(self.max_bytes)} "
                f"in {self.root}")


@contextlib.contextmanager
def _entry_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of the entry ``path`` (``.lock-<name>`` beside it); yields whether it is held.

    ``wait=False`` gives up at once when another process holds it. The lock file is deleted before the lock
    is released (so none are left behind); as in :mod:`nrrstore.format.lock`, a lock file deleted between its
    opening and its locking is not held: the next holder locks the new one.
    """
    if fcntl is None:
        yield True
        return
    lock = path.with_name(LOCK_PREFIX + path.name)
    fd = -1
    while fd < 0:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by an eviction meanwhile: make it again
            continue
        except OSError as exc:
            raise NrrError(path, f"cannot lock the cached shard: {os_problem(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            fd = -1
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it, so no one locks a file that is about to vanish
        os.close(fd)
