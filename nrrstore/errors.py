"""One exception type for every user-facing failure.

Why one type: the CLI turns any `NrrError` into a single line ``nrrstore: <path>: <problem>`` and a
non-zero exit, so every layer can raise without knowing how it will be shown.
"""

from __future__ import annotations

import os


class NrrError(Exception):
    """A problem with user input or a store, tied to the file it concerns."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class FormatVersionError(NrrError):
    """A store written by an incompatible (unknown major) format version."""


class ResumeMismatchError(NrrError):
    """An existing partial output was made with different arguments."""
