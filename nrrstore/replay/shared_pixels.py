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
import fcntl
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAGE = 4096
SHM = Path("/dev/shm")


def _memory_folder() -> str | None:
    """Where a file lives in memory: /dev/shm when writable (else None: the disk is no place for a cache)."""
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK) else None


class SharedPixels:
    """``count`` blocks of ``block`` images of ``image_shape`` uint8, shared across fork and pickling.

    Create it with :meth:`create` in the process that owns the loader; workers get it with the stream and map it
    on first use. ``get`` returns a block's pixels (a copy, owned by the caller) or None before any process has
    decoded it; ``put`` stores them.
    """

    def __init__(self, count: int, block: int, image_shape: tuple[int, ...], fd: int, owner: int) -> None:
        self.count, self.block, self.image_shape = count, block, tuple(image_shape)
        self.image_bytes = math.prod(self.image_shape)
        self.header = -(-count // PAGE) * PAGE  # the flags, one page-aligned run before the pixels
        self.size = self.header + count * block * self.image_bytes
        self._fd, self._owner = fd, owner  # the creator closes its descriptor when the object goes
        self._path = f"/proc/{owner}/fd/{fd}"  # how every process (the creator too) maps the region
        self._map: np.ndarray | None = None
        self._unusable = False
        self._lock: tuple[int, int] | None = None  # (pid, descriptor) this process locks flags through

    @classmethod
    def create(cls, count: int, block: int, image_shape: tuple[int, ...]) -> SharedPixels | None:
        """A zero-filled region for ``count`` blocks, or None where no shared memory can be made."""
        folder = _memory_folder()
        if count < 1 or folder is None or not Path(f"/proc/{os.getpid()}/fd").is_dir():
            return None
        try:
            fd, path = tempfile.mkstemp(prefix="nrrstore-pixels-", dir=folder)
        except OSError:
            return None
        os.unlink(path)  # from now on the descriptor is the only name: nothing can be left behind
        while count >= 1:
            shared = cls(count, block, image_shape, fd, os.getpid())
            try:  # reserved now: a full /dev/shm (64 MB in a default container) must not SIGBUS a write later
                os.posix_fallocate(fd, 0, shared.size)
                return shared
            except OSError:
                shared._fd = -1  # the descriptor stays open for the next, smaller try
                os.ftruncate(fd, 0)
                count //= 2
        os.close(fd)
        return None

    def __del__(self) -> None:
        mine = [fd for pid, fd in [(self._owner, self._fd), self._lock or (0, -1)] if fd >= 0 and pid == os.getpid()]
        for fd in mine:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:  # another process maps the region again, through /proc
        return {**self.__dict__, "_map": None, "_fd": -1, "_lock": None}

    def _lock_fd(self) -> int | None:
        if self._lock is None or self._lock[0] != os.getpid():  # record locks belong to a process: one fd each
            try:
                self._lock = (os.getpid(), os.open(self._path, os.O_RDWR | os.O_CLOEXEC))
            except OSError:
                return None
        return self._lock[1]

    def fill(self, b: int, rows: int, decode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Block ``b``'s pixels: stored ones, else ``decode()``'s, stored for every process. One process decodes
        a block; another that wants it meanwhile waits for it."""
        got = self.get(b, rows)
        if got is not None:
            return got
        fd = self._lock_fd()
        if fd is None or self._mapped() is None:
            return decode()
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, b)
        try:
            got = self.get(b, rows)
            if got is None:
                got = decode()
                self.put(b, got)
            return got
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, b)

    def _mapped(self) -> np.ndarray | None:
        if self._map is None and not self._unusable:
            try:  # a forked worker inherits the creator's mapping; a spawned one maps it here
                self._map = np.memmap(self._path, dtype=np.uint8, mode="r+", shape=(self.size,))
            except (OSError, ValueError):
                self._unusable = True  # the creator has gone, or /proc is closed to us: decode without it
        return self._map

    def has(self, b: int) -> bool:
        """Whether some process has stored block ``b``."""
        m = self._mapped()
        return m is not None and bool(m[b])

    def get(self, b: int, rows: int) -> torch.Tensor | None:
        """Block ``b``'s first ``rows`` images ``[rows, *image_shape]``, or None if no process has stored it.

        A view of the shared memory, not a copy (callers index rows out of it, which copies): never write to it.
        """
        m = self._mapped()
        if m is None or not m[b]:
            return None
        start = self.header + b * self.block * self.image_bytes
        view = np.frombuffer(m, np.uint8, rows * self.image_bytes, start)
        return torch.from_numpy(view.reshape(rows, *self.image_shape))

    def put(self, b: int, pixels: torch.Tensor) -> None:
        """Store block ``b``'s pixels, then its flag."""
        m = self._mapped()
        if m is None:
            return
        start = self.header + b * self.block * self.image_bytes
        m[start:start + pixels.numel()] = pixels.numpy().reshape(-1)
        m[b] = 1
