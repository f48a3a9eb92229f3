"""Converting epochs in parallel: a process pool that hands back each epoch's rows in order.

Epochs are independent given their image order, so with ``workers > 1`` a pool converts several
at once, at most ``workers`` ahead of the writer, so memory stays bounded whatever the number of
epochs; rows (and so bytes) are the same as in one process. Workers run one torch thread each
(the parallelism is the processes), and their `NrrError`s come back as data, since the exception
type does not pickle.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import torch

from nrrstore.convert.sre2l.rows import EpochRows, EpochWork
from nrrstore.errors import NrrError
from nrrstore.processes import die_with_parent

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this


@dataclass
class _Failure:
    """An `NrrError` raised in a worker, sent back as data."""

    path: str | None
    problem: str


_WORKER: EpochWork | None = None


def _worker_init(work: EpochWork, parent: int) -> None:
    global _WORKER
    die_with_parent(parent)  # a killed converter leaves no worker holding its memory and its output's lock
    _WORKER = work
    torch.set_num_threads(1)  # parallelism comes from the processes


def _worker_task(e: int, order: np.ndarray) -> EpochRows | _Failure:
    assert _WORKER is not None
    try:
        return _WORKER(e, order)
    except NrrError as exc:
        return _Failure(exc.path, exc.problem)


def _start_method() -> str:
    # fork starts workers in milliseconds without re-importing torch; elsewhere (macOS, Windows) spawn.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class EpochPool:
    """Rows of consecutive epochs, in order, from ``work`` run here (``workers`` <= 1) or in a pool."""

    def __init__(self, work: EpochWork, workers: int) -> None:
        self.work, self.workers = work, workers
        self._pool: ProcessPoolExecutor | None = None

    def epochs(self, first: int, last: int, orders: Iterator[np.ndarray]) -> Generator[EpochRows, None, None]:
        """Rows of epochs ``first..last``; ``orders`` yields each epoch's image order in turn."""
        if self.workers <= 1 or first == last:
            for e in range(first, last + 1):
                yield self.work(e, next(orders))
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(_start_method()),
                                             initializer=_worker_init, initargs=(self.work, os.getpid()))
        pending: deque[Future[EpochRows | _Failure]] = deque()
        e = first
        try:
            while e <= last or pending:
                while e <= last and len(pending) < self.workers:
                    pending.append(self._pool.submit(_worker_task, e, next(orders)))
                    e += 1
                res = pending.popleft().result()
                if isinstance(res, _Failure):
                    raise NrrError(res.path, res.problem)
                yield res
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
