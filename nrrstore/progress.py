"""How long jobs report progress: the one callback type of the library.

A job calls ``progress(task, done, total)`` as it goes (``total`` None while unknown); the command
line shows it as a bar (`nrrstore_cli._common.ProgressBar`), a script may log it or pass nothing.
The library never draws anything itself, so it never imports a terminal library.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(task, done, total)``: ``done`` of ``total`` units of ``task`` (e.g. "relabel views")."""

    def __call__(self, task: str, done: int, total: int | None, /) -> None: ...


class StepProgress(Protocol):
    """``progress(done, total)``: steps of one inner loop (a training run, an NRR refinement), whose
    caller names the task and may convert the unit (steps to images) before reporting a `Progress`."""

    def __call__(self, done: int, total: int | None, /) -> None: ...
