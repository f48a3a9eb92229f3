"""Decoded images shared by a loader's processes: one uint8 region that the consumer and its workers all map.

Why: each decoding worker used to keep a cache of its own, and work item j goes to worker j % workers while
the order of partner groups changes every epoch, so a worker found the group it was handed in its own cache
about 1/workers of the time, and every epoch decoded most JPEGs again. One region that every process maps
makes a group decoded by any of them a hit for all: a second epoch decodes nothing while the store fits under
the cap. A store larger than the cap keeps its first blocks that fit, so every epoch hits the same share
(a per-process LRU over a shuffled order hits almost never).

The region is a file in ``/dev/shm`` (memory, not disk), unlinked the moment it is created: the other
processes reach it through the creator's open descriptor (``/proc/PID/fd/N``), so no crash, ``kill -9``
included, leaves it behind. Where that cannot work (no ``/proc``, nothing writable in memory) there is no
shared region and each process keeps its own cache, as before.

Each block has a flag byte, set after its pixels are written: a reader that sees the flag sees the pixels.
A process about to decode a block holds a lock on its flag byte (``fcntl``; the kernel drops it if the process
dies), so a worker that has run ahead into the next epoch waits for the group another is decoding instead of
decoding it too: each block is decoded once, whatever the timing.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no shared region, each process keeps its own cache
    fcntl = None  # type: ignore[assignment]

PAGE = 4096
SHM = Path("/dev/shm")


def _memory_folder() -> str | None:
    """Where a file lives in memory: /dev/shm when writable (else None: the disk is no place for a cache)."""
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK) else None


class SharedPixels:
    """``count`` blocks of ``block`` images of ``image_shape`` uint8, shared across fork and pickling.

    Create it with :meth:`create` in the process that owns the loader; workers get it with the stream and map it
    on first use. ``get`` returns a view of a block's pixels (never write to it) or None before any process has
    decoded it; ``fill`` decodes a block once for every process.

    Each process reaches the region through one descriptor of its own (opened through the creator's, then
    checked to be the same file: a descriptor number can be reused once the creator closes it), which it also
    locks through: closing any other descriptor of the file would drop the process's locks.
    """

    def __init__(self, count: int, block: int, image_shape: tuple[int, ...], fd: int, identity: tuple[int, int]
                 ) -> None:
        self.count, self.block, self.image_shape = count, block, tuple(image_shape)
        self.image_bytes = math.prod(self.image_shape)
        self.header = -(-count // PAGE) * PAGE  # the flags, one page-aligned run before the pixels
        self.size = self.header + count * block * self.image_bytes
        self._owner, self._identity = os.getpid(), identity
        self._path = f"/proc/{self._owner}/fd/{fd}"  # how another process finds the region
        self._fd: tuple[int, int] | None = (self._owner, fd)  # (pid, descriptor) of this process
        self._map: np.ndarray | None = None
        self._unusable = False
        self._seen: set[int] = set()  # blocks whose flag this process has synchronised with (see `get`)
        self._thread_lock = threading.Lock()  # record locks are per process: threads take turns here

    @classmethod
    def create(cls, count: int, block: int, image_shape: tuple[int, ...]) -> SharedPixels | None:
        """A zero-filled region for ``count`` blocks, or None where no shared memory can be made."""
        folder = _memory_folder()
        if count < 1 or folder is None or fcntl is None or not Path(f"/proc/{os.getpid()}/fd").is_dir():
            return None
        try:
            fd, path = tempfile.mkstemp(prefix="nrrstore-pixels-", dir=folder)
        except OSError:
            return None
        os.unlink(path)  # from now on the descriptor is the only name: nothing can be left behind
        st = os.fstat(fd)
        while count >= 1:
            shared = cls(count, block, image_shape, fd, (st.st_dev, st.st_ino))
            try:  # reserved now: a full /dev/shm (64 MB in a default container) must not SIGBUS a write later
                os.posix_fallocate(fd, 0, shared.size)
                return shared
            except OSError:
                shared._fd = None  # the descriptor stays open for the next, smaller try
                os.ftruncate(fd, 0)
                count //= 2
        os.close(fd)
        return None

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd[1])

    def __getstate__(self) -> dict[str, Any]:  # another process opens and maps the region again
        state = {**self.__dict__, "_map": None, "_fd": None, "_seen": set()}
        del state["_thread_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _thread_lock=threading.Lock())

    def _descriptor(self) -> int | None:
        """This process's descriptor of the region (a forked worker uses the one it inherited)."""
        if self._fd is None and not self._unusable:
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                self._unusable = True  # the creator has gone, or /proc is closed to us: decode without it
                return None
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._identity or st.st_size != self.size:
                os.close(fd)  # the creator's number now names another file: never write into it
                self._unusable = True
                return None
            self._fd = (os.getpid(), fd)
        return None if self._fd is None else self._fd[1]

    def _mapped(self) -> np.ndarray | None:
        if self._map is None:
            fd = self._descriptor()
            if fd is None:
                return None
            with open(fd, "r+b", closefd=False) as f:  # the mapping outlives the file object, not the descriptor
                self._map = np.memmap(f, dtype=np.uint8, mode="r+", shape=(self.size,))
        return self._map

    def has(self, b: int) -> bool:
        """Whether some process has stored block ``b``."""
        m = self._mapped()
        return m is not None and bool(m[b])

    def get(self, b: int, rows: int) -> torch.Tensor | None:
        """Block ``b``'s first ``rows`` images ``[rows, *image_shape]``, or None if no process has stored it.

        A view of the shared memory, not a copy (callers index rows out of it, which copies): never write to it.
        The first time this process sees a block's flag set it takes the block's lock once, which orders its
        reads after the writer's (x86 keeps the order anyway; ARM does not).
        """
        m = self._mapped()
        if m is None or not m[b]:
            return None
        if b not in self._seen:
            fd = self._descriptor()
            if fd is not None and fcntl is not None:
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, b)
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, b)
            self._seen.add(b)
        start = self.header + b * self.block * self.image_bytes
        view = np.frombuffer(m, np.uint8, rows * self.image_bytes, start)
        return torch.from_numpy(view.reshape(rows, *self.image_shape))

    def put(self, b: int, pixels: torch.Tensor) -> None:
        """Store block ``b``'s pixels, then its flag (call it holding the block's lock: see `fill`)."""
        m = self._mapped()
        if m is None:
            return
        start = self.header + b * self.block * self.image_bytes
        m[start:start + pixels.numel()] = pixels.numpy().reshape(-1)
        m[b] = 1
        self._seen.add(b)

    def fill(self, b: int, rows: int, decode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Block ``b``'s pixels: stored ones, else ``decode()``'s, stored for every process. One process decodes
        a block; another that wants it meanwhile waits for it."""
        got = self.get(b, rows)
        if got is not None:
            return got
        fd = self._descriptor()
        if fd is None or fcntl is None or self._mapped() is None:
            return decode()
        with self._thread_lock:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, b)
            try:
                self._seen.add(b)  # holding the lock orders the reads below after any writer's
                got = self.get(b, rows)
                if got is None:
                    got = decode()
                    self.put(b, got)
                return got
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, b)
