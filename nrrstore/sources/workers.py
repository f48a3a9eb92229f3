"""`prepare --workers N`: reading, decoding, converting and encoding samples in worker processes.

One process spends nearly all of a `prepare` in Pillow (decode, resize, PNG encode); the tar writer is cheap.
So workers do that part (`nrrstore.sources.encode`, the very code one process runs) on small work items
(file paths, or slices of an IDX array), and the parent writes every member in input order: shards are
byte-identical to ``workers=0``. At most `_AHEAD` batches per worker are in flight, so memory stays bounded
whatever the writer's speed; errors come back as data and are raised at their sample's turn, so the first bad
file in input order is the one named, as in one process. A worker that dies fails the run in one line
(`concurrent.futures` notices; `multiprocessing.Pool` would wait forever for the lost batch).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from nrrstore.errors import NrrError
from nrrstore.limits import MAX_WORKERS
from nrrstore.processes import die_with_parent
from nrrstore.sources.encode import Encoded, Failure, SourceImage, encode_sample, read_sample_file

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

FILES_BATCH = 32
"""Image files per work item: enough to pay for a round trip, few enough that full-size photos stay small."""
PIXELS_BATCH = 256
"""IDX images per work item (28x28 images encode in tens of microseconds each)."""
_AHEAD = 2
"""Batches per worker in flight: one running, one queued, so a worker never waits for the writer."""

R = TypeVar("R")


@dataclass(frozen=True)
class EncodeJob:
    """What every sample of one `prepare` gets done to (sent to each worker once)."""

    image_format: str
    mode: str
    resize: int | None
    max_pixels: int


def check_workers(workers: int) -> int:
    """``workers`` as given, if it is a count of processes `prepare` may start."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise NrrError(None, f"workers must be a non-negative integer, got {workers!r}")
    if workers > MAX_WORKERS:
        raise NrrError(None, f"--workers {workers} is more than {MAX_WORKERS} worker processes")
    return workers


_JOB: EncodeJob | None = None
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _worker_init(job: EncodeJob, parent: int) -> None:
    global _JOB
    die_with_parent(parent)  # a killed prepare leaves no worker holding memory and the output's lock
    # Ctrl-C (and a terminal's hang-up, a service manager's SIGTERM) reach the whole process group: the parent
    # alone stops, cleans up and kills the workers, so no worker prints a traceback or dies first and
    # passes for a crash.
    for name in _STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _JOB = job


def _encode(item: np.ndarray | SourceImage, key: str, job: EncodeJob) -> Encoded:
    try:
        ext, data = encode_sample(item, key, job.image_format, job.mode, job.resize)
    except NrrError as exc:
        return Encoded(failure=Failure.of(exc))
    return Encoded(ext, data)


FileResult = tuple[tuple[int, int], Encoded] | Failure
"""A file's decoded ``(width, height)`` (the parent checks sizes in order) and its encoded sample, or the
`Failure` reading or decoding it raised."""


def _file_batch(job: EncodeJob, keys: list[str], paths: list[Path]) -> list[FileResult]:
    """Read, decode and encode image files."""
    out: list[FileResult] = []
    for key, path in zip(keys, paths, strict=True):
        try:
            item = read_sample_file(path, job.image_format, job.max_pixels)
        except NrrError as exc:
            out.append(Failure.of(exc))
            continue
        shape = (item if isinstance(item, np.ndarray) else item.pixels).shape
        out.append(((shape[1], shape[0]), _encode(item, key, job)))
    return out


def _pixels_batch(job: EncodeJob, keys: list[str], images: np.ndarray) -> list[Encoded]:
    """Encode a slice of an IDX array."""
    return [_encode(image, key, job) for key, image in zip(keys, images, strict=True)]


def _in_worker(fn: Callable[..., list[R]], *batch: Any) -> list[R]:
    assert _JOB is not None
    return fn(_JOB, *batch)


def _start_method() -> str:
    # fork starts workers in milliseconds without re-importing numpy and Pillow (as the SRe2L converter's pool);
    # elsewhere (macOS, Windows) spawn.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class EncodePool:
    """``workers`` processes doing an `EncodeJob`, started on first use and ended with the ``with`` block
    (at once, not after their queued work, when the block ends in an error, Ctrl-C or SIGTERM); with
    ``workers=0`` the same work runs here, batch by batch."""

    def __init__(self, job: EncodeJob, workers: int) -> None:
        self.job, self.workers = job, check_workers(workers)
        self._pool: ProcessPoolExecutor | None = None

    def _run(self, fn: Callable[..., list[R]], batches: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        """``fn(job, *batch)``'s results, batch after batch in order, at most `_AHEAD` per worker in flight."""
        if self.workers == 0:
            for batch in batches:
                yield from fn(self.job, *batch)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(_start_method()),
                                             initializer=_worker_init, initargs=(self.job, os.getpid()))
        pending: deque[Future[list[R]]] = deque()
        todo = iter(batches)
        try:
            while True:
                for batch in itertools.islice(todo, _AHEAD * self.workers - len(pending)):
                    pending.append(self._pool.submit(_in_worker, fn, *batch))
                if not pending:
                    return
                try:
                    results = pending.popleft().result()
                except BrokenProcessPool:
                    raise NrrError(None, "a prepare worker process died (killed, or out of memory?); rerun with "
                                         "fewer --workers") from None
                yield from results
        finally:
            for fut in pending:
                fut.cancel()

    def files(self, keys: list[str], paths: list[Path]) -> Iterator[FileResult]:
        """`FileResult` of each file, in order."""
        return self._run(_file_batch, ((keys[a:a + FILES_BATCH], paths[a:a + FILES_BATCH])
                                       for a in range(0, len(keys), FILES_BATCH)))

    def pixels(self, keys: list[str], images: np.ndarray, rows: np.ndarray) -> Iterator[Encoded]:
        """Each of ``images[rows]`` encoded, in order (a slice is copied out only as its batch is sent)."""
        return self._run(_pixels_batch, ((keys[a:a + PIXELS_BATCH], images[rows[a:a + PIXELS_BATCH]])
                                         for a in range(0, len(keys), PIXELS_BATCH)))

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        if abort:  # end the workers now (they ignore stop signals): their queued batches are of no use any more
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)
