"""Decoding worker processes whose failures fail the run: the worker-side dataset (`ItemSource`), the worker
count and its cap, the open-file headroom they need, and `worker_items`, the consumer's view of them.

Shared by the student's loader and relabeling: a worker that dies, stops early or cannot send its tensors must
end the run in one line, never leave a short epoch that passes for a whole one.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nrrstore.errors import NrrError
from nrrstore.limits import MAX_WORKERS
from nrrstore.processes import die_with_parent
from nrrstore.replay.stream import ViewStream


class ItemSource(IterableDataset):
    """What a DataLoader iterates: a stream's work items, worker w taking items j % workers == w
    (``skip``: as :meth:`ViewStream.items`)."""

    def __init__(self, stream: ViewStream, skip: int = 0) -> None:
        super().__init__()
        self.stream, self.skip = stream, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        items = self.stream.items(*((info.id, info.num_workers) if info is not None else (0, 1)), skip=self.skip)
        return items if info is None else _in_worker(items)


class WorkerError(RuntimeError):
    """An `NrrError` raised in a decoding worker, carried to the consumer as its one line (torch rebuilds a
    worker's exception from its type and text, which `NrrError` cannot take)."""


def _in_worker(items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    try:
        yield from items
    except NrrError as exc:
        raise WorkerError(exc.message) from None


def worker_count(workers: int | None) -> int:
    """``workers`` checked (None: one per CPU up to 4, minus the consumer)."""
    if workers is None:
        return max(0, min(4, (os.cpu_count() or 1) - 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise NrrError(None, f"workers must be a non-negative integer, got {workers!r}")
    if workers > MAX_WORKERS:
        raise NrrError(None, f"--workers {workers} is more than {MAX_WORKERS} worker processes")
    return workers


# -- worker processes whose failures fail the run ---------------------------------------------------
WORKER_TIMEOUT_S = 600.0
"""A decoding worker that sends nothing for this long has failed (a lost item, a stuck process); a work item
takes well under a second."""
OPEN_FILES_BASE, OPEN_FILES_PER_WORKER = 128, 64
"""Open files a run needs: the process itself, plus each worker's shards and the descriptors through which
its tensors reach the consumer."""


def too_many_open_files(workers: int, limit: int | None = None) -> str:
    have = f"the open-file limit is {limit}; " if limit is not None else ""
    return (f"too many open files: {have}raise `ulimit -n` (to at least "
            f"{OPEN_FILES_BASE + OPEN_FILES_PER_WORKER * workers}) or use fewer --workers ({workers} now)")


def ensure_open_files(workers: int) -> None:
    """Raise the soft open-file limit to what ``workers`` need when the hard limit allows, else refuse in one
    line before any work: with too few, torch's queue threads fail to send tensors and the run hangs or ends
    early."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    need = OPEN_FILES_BASE + OPEN_FILES_PER_WORKER * workers
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(hard, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    if soft < need:
        raise NrrError(None, too_many_open_files(workers, soft))


def _die_with(parent: int, _worker_id: int) -> None:
    die_with_parent(parent)


def worker_items(source: ItemSource, workers: int, pin_memory: bool, prefetch_factor: int) -> Iterator[dict[str, Any]]:
    """``source``'s items from ``workers`` decoding processes, where any worker failure fails the run in one
    line: the open-file limit is checked first, a worker silent for `WORKER_TIMEOUT_S` ends the run, and a
    worker's exception or death is named."""
    ensure_open_files(workers)
    loader = DataLoader(source, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=prefetch_factor, timeout=WORKER_TIMEOUT_S,
                        worker_init_fn=functools.partial(_die_with, os.getpid()))
    it = iter(loader)
    try:
        yield from it
    except NrrError:
        raise
    except WorkerError as exc:  # the worker's own one line, last in torch's text
        line = str(exc).strip().splitlines()[-1]
        raise NrrError(None, line.split(f"{WorkerError.__name__}: ", 1)[-1]) from None
    except (RuntimeError, OSError) as exc:
        text = str(exc)
        if "Too many open files" in text or getattr(exc, "errno", None) == errno.EMFILE:
            raise NrrError(None, too_many_open_files(workers)) from None
        if "timed out" in text:
            raise NrrError(None, f"a decoding worker sent nothing for {WORKER_TIMEOUT_S:.0f} s and the run was "
                                 "stopped; rerun with --workers 0 to see the cause") from None
        if "exited unexpectedly" in text or "killed by signal" in text:
            raise NrrError(None, "a decoding worker died (killed, or out of memory?); rerun with fewer --workers "
                                 "or a smaller --cache-mb") from None
        lines = [line for line in text.strip().splitlines() if line.strip()]
        cause = lines[-1].strip() if lines else type(exc).__name__  # the worker's own last traceback line
        cause = cause.removeprefix("nrrstore.errors.NrrError: ")
        raise NrrError(None, f"a decoding worker failed: {cause}") from None
    finally:  # stop the workers now: an iterator left to the garbage collector leaks into later forks
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
