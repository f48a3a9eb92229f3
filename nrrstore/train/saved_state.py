"""Reading back what an interrupted training run saved (a student's checkpoint, a teacher's resume state).

Why one module: both are loaded with ``weights_only=True`` (plain tensors and data, never code), both need a
one-line reason when torch cannot load them (its own messages run to pages), and both refuse a state made with
other settings by naming the settings that differ.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from nrrstore.errors import os_problem


def why_unreadable(path: Path, exc: BaseException) -> str:
    """What is wrong with a checkpoint torch cannot load, in words (torch's own messages run to pages)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return os_problem(e)
    if not head:
        return "empty file"
    if head[:2] != b"PK":
        return "not a torch zip archive: another file, or not written by nrrstore"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
        return "it holds objects other than tensors and plain data, which are never unpickled"
    return f"truncated or damaged archive ({type(exc).__name__})"


def changed_keys(ours: dict[str, Any], theirs: Any) -> list[str]:
    """The keys whose values differ between this run's settings and the saved ones (missing counts as None)."""
    saved = theirs if isinstance(theirs, dict) else {}
    return sorted(k for k in set(ours) | set(saved) if ours.get(k) != saved.get(k))
