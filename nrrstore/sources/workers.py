"""`prepare --workers N`: reading, decoding, converting and encoding samples in worker processes.

One process spends nearly all of a `prepare` in Pillow (decode, resize, PNG encode); the tar writer is cheap.
So workers do that part (`nrrstore.sources.encode`, the very code one process runs) on small work items
(file paths, or slices of an IDX array), and the parent writes every member in input order: shards are
byte-identical to ``workers=0``. At most `_AHEAD` batches per worker are in flight, so memory stays bounded
whatever the writer's speed; errors come back as data and are raised at their sample's turn, so the first bad
file in input order is the one named, as in one process. The pool itself (order, bounds, stopping, a worker
that dies) is `nrrstore.ordered_pool`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from nrrstore.errors import NrrError
from nrrstore.ordered_pool import OrderedPool, check_workers
from nrrstore.sources.encode import Encoded, Failure, SourceImage, encode_sample, read_sample_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

__all__ = ["FILES_BATCH", "PIXELS_BATCH", "EncodeJob", "EncodePool", "FileResult", "check_workers"]

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


class EncodePool:
    """``workers`` processes doing an `EncodeJob` (`OrderedPool`: started on first use, ended with the ``with``
    block); with ``workers=0`` the same work runs here, batch by batch."""

    def __init__(self, job: EncodeJob, workers: int) -> None:
        self.job = job
        self._pool = OrderedPool(job, workers, command="prepare", ahead=_AHEAD)

    @property
    def workers(self) -> int:
        return self._pool.workers

    def _run(self, fn: Callable[..., list[R]], batches: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        """``fn(job, *batch)``'s results, batch after batch in order."""
        for results in self._pool.map(fn, batches):
            yield from results

    def files(self, keys: list[str], paths: list[Path]) -> Iterator[FileResult]:
        """`FileResult` of each file, in order."""
        return self._run(_file_batch, ((keys[a:a + FILES_BATCH], paths[a:a + FILES_BATCH])
                                       for a in range(0, len(keys), FILES_BATCH)))

    def pixels(self, keys: list[str], images: np.ndarray, rows: np.ndarray) -> Iterator[Encoded]:
        """Each of ``images[rows]`` encoded, in order (a slice is copied out only as its batch is sent)."""
        return self._run(_pixels_batch, ((keys[a:a + PIXELS_BATCH], images[rows[a:a + PIXELS_BATCH]])
                                         for a in range(0, len(keys), PIXELS_BATCH)))

    def close(self, abort: bool = False) -> None:
        self._pool.close(abort)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)
