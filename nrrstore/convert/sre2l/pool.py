"""Converting epochs in parallel: each epoch's rows handed back in order.

Epochs are independent given their image order, so with ``workers > 1`` an `OrderedPool` converts several at
once, at most ``workers`` ahead of the writer, so memory stays bounded whatever the number of epochs; rows
(and so bytes) are the same as in one process. Workers run one torch thread each (the parallelism is the
processes), and their `NrrError`s come back as data, since the exception type does not pickle.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import torch

from nrrstore.convert.sre2l.rows import EpochRows, EpochWork
from nrrstore.errors import NrrError
from nrrstore.ordered_pool import OrderedPool

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this


@dataclass
class _Failure:
    """An `NrrError` raised in a worker, sent back as data."""

    path: str | None
    problem: str


def _one_thread() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


def _epoch(work: EpochWork, e: int, order: np.ndarray) -> EpochRows | _Failure:
    try:
        return work(e, order)
    except NrrError as exc:
        return _Failure(exc.path, exc.problem)


class EpochPool:
    """Rows of consecutive epochs, in order, from ``work`` run here (``workers`` <= 1) or in a pool."""

    def __init__(self, work: EpochWork, workers: int) -> None:
        self.work, self.workers = work, workers
        self._pool = OrderedPool(work, workers if workers > 1 else 0, command="convert-softlabels",
                                 init=_one_thread)

    def epochs(self, first: int, last: int, orders: Iterator[np.ndarray]) -> Generator[EpochRows, None, None]:
        """Rows of epochs ``first..last``; ``orders`` yields each epoch's image order in turn."""
        if first == last:  # one epoch: nothing to overlap
            yield self.work(first, next(orders))
            return
        for res in self._pool.map(_epoch, ((e, next(orders)) for e in range(first, last + 1))):
            if isinstance(res, _Failure):
                raise NrrError(res.path, res.problem)
            yield res

    def close(self, abort: bool = False) -> None:
        self._pool.close(abort)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)
