"""Work items run in worker processes, their results handed back in input order, a bounded number in flight.

`prepare --workers` (encoding images) and `convert-softlabels --workers` (converting epochs) need the same
pool, and its details are where they fail: it starts on first use (a small job never forks); at most
``ahead`` items per worker are in flight, so memory stays bounded whatever the consumer's speed; a worker that
dies fails the run in one line (`concurrent.futures` notices, where `multiprocessing.Pool` would wait forever
for the lost item); workers die with their parent and ignore stop signals, so a terminal's Ctrl-C (sent to
the whole process group) reaches the parent alone, which cleans up and then kills the workers: no worker
prints a traceback or dies first and passes for a crash. With ``workers=0`` the same work runs here, item by
item, so results are identical either way.
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
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nrrstore.errors import NrrError
from nrrstore.limits import MAX_WORKERS
from nrrstore.processes import die_with_parent

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

_POLL_S = 0.5
"""How often a wait for a result checks that every worker is alive."""
S = TypeVar("S")
R = TypeVar("R")
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_STATE: Any = None
"""In a worker: the pool's ``state``, sent once at start rather than with every item."""


def check_workers(workers: object) -> int:
    """``workers`` as given, if it is a count of processes a command may start."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise NrrError(None, f"workers must be a non-negative integer, got {workers!r}")
    if workers > MAX_WORKERS:
        raise NrrError(None, f"--workers {workers} is more than {MAX_WORKERS} worker processes")
    return workers


def _start_method() -> str:
    # fork starts workers in milliseconds without re-importing torch, numpy or Pillow; elsewhere (macOS,
    # Windows) spawn.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_init(state: Any, parent: int, init: Callable[[], None] | None) -> None:
    global _STATE
    die_with_parent(parent)  # a killed command leaves no worker holding memory and its output's lock
    for name in _STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if init is not None:
        init()
    _STATE = state


def _in_worker(fn: Callable[..., R], *item: Any) -> R:
    return fn(_STATE, *item)


class OrderedPool(Generic[S]):
    """``fn(state, *item)`` for each item, in order, run by ``workers`` processes (started on first use and
    ended with the ``with`` block: at once, not after their queued items, when the block ends in an error,
    Ctrl-C or SIGTERM) or here with ``workers=0``. ``fn`` and ``init`` are module-level functions (they are
    pickled); ``command`` names the command in the message of a worker that died."""

    def __init__(self, state: S, workers: int, *, command: str, ahead: int = 1,
                 init: Callable[[], None] | None = None) -> None:
        self.state, self.workers, self.command, self.ahead, self.init = state, check_workers(workers), command, \
            ahead, init
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        """The results of ``fn(state, *item)``, item after item; ``items`` is read only as room frees up."""
        if self.workers == 0:
            for item in items:
                yield fn(self.state, *item)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(_start_method()),
                                             initializer=_worker_init, initargs=(self.state, os.getpid(), self.init))
        pending: deque[Future[R]] = deque()
        todo = iter(items)
        try:
            while True:
                for item in itertools.islice(todo, self.ahead * self.workers - len(pending)):
                    pending.append(self._pool.submit(_in_worker, fn, *item))
                if not pending:
                    return
                try:
                    result = self._result(pending.popleft())
                except BrokenProcessPool:
                    raise NrrError(None, f"a {self.command} worker process died (killed, or out of memory?); "
                                         "rerun with fewer --workers") from None
                yield result
        finally:
            for fut in pending:
                fut.cancel()

    def _result(self, fut: Future[R]) -> R:
        """``fut.result()``, unless a worker died: then the pool is broken (`BrokenProcessPool`)."""
        while True:
            try:
                return fut.result(timeout=_POLL_S)
            except TimeoutError:
                if any(proc.exitcode is not None for proc in self._processes()):
                    self._kill_workers()  # the pool notices (now for sure, see there) and fails every future

    def _processes(self) -> list[Any]:
        return list((getattr(self._pool, "_processes", None) or {}).values())

    def _kill_workers(self) -> None:
        """End every worker now, and make sure the pool notices. A worker killed while it sent a result (or
        killed by the kernel for memory) leaves half a message in the result pipe, and the pool's thread waits
        for its rest forever, since the pipe's write end is open here too, and `shutdown` waits for that
        thread: closing this end turns the wait into end-of-file, and the pool into a broken one."""
        for proc in self._processes():
            proc.kill()  # the end of file comes once they are gone (the kernel closes their copies of the pipe)
        writer = getattr(getattr(self._pool, "_result_queue", None), "_writer", None)
        if writer is not None:
            writer.close()

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        if abort:  # end the workers now (they ignore stop signals): their queued items are of no use any more
            self._kill_workers()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(abort=exc_type is not None)
