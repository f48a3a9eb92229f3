"""What an interrupted command keeps for its rerun.

Each resumable job notes here what it has saved so far (finished classes, epoch files, cells, a checkpoint) and
clears the note once that state is gone or complete. When SIGTERM, SIGHUP or Ctrl-C stops a command, the CLI
prints the notes in its one line (``nrrstore: terminated; kept 3 of 10 finished classes in .work-out: rerun the
same command to resume``), so a user knows what the stop cost and what the rerun will do.
"""

from __future__ import annotations

_NOTES: dict[str, str] = {}


def note(key: str, text: str) -> None:
    """Record (or update) what the job ``key`` (its work path) has kept so far."""
    _NOTES[key] = text


def clear(key: str) -> None:
    """The job ``key`` finished or removed its state: nothing of it is left to resume."""
    _NOTES.pop(key, None)


def kept_text() -> str | None:
    """Every open note, joined; None when nothing would be resumed."""
    return "; ".join(_NOTES.values()) or None
