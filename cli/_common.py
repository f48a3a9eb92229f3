"""What every command shares: error reporting, JSON output and progress bars on stderr."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nrrstore.errors import NrrError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print one line ``nrrstore: message`` on stderr and exit with ``code``."""
    print(f"nrrstore: {message}", file=sys.stderr)
    raise SystemExit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NrrError as exc:
            fail(exc.message)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


class ProgressBar:
    """A rich progress bar on stderr exposed as a ``progress(task, done, total)`` callback.

    The library reports progress through plain callbacks; this adapter shows them. It stays silent
    when stderr is not a terminal unless forced, so logs and `--json` runs stay clean.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
            disable=not enabled,
        )
        self._tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int | None = None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=done, total=total)

    def __enter__(self) -> "ProgressBar":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)


def iter_progress(items: list[Any], task: str, progress: Callable[[str, int, int | None], None] | None) -> Iterator[Any]:
    for i, item in enumerate(items):
        yield item
        if progress:
            progress(task, i + 1, len(items))
