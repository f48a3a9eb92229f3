"""Resume state of a long job (relabel, convert): its arguments and progress in a work folder.

Why one helper: every resumable job must refuse to continue work that was started with other
arguments, say which ones differ, and treat a folder killed before its first state write as empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nrrstore.errors import NrrError, ResumeMismatchError
from nrrstore.format.atomic import atomic_write_bytes

STATE_NAME = "state.json"


def load_state(work: Path, args: dict[str, Any], job: str) -> dict[str, Any] | None:
    """The saved state of an unfinished ``job`` in ``work`` (None: start afresh).

    ``args`` are compared after a JSON round trip, so tuples and lists compare equal.
    """
    path = work / STATE_NAME
    if not path.is_file():
        if work.exists():
            shutil.rmtree(work)  # killed before its first state write: nothing to keep
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        prior = state["args"]
    except (OSError, ValueError, KeyError, TypeError):
        raise NrrError(path, f"unreadable {job} state; delete this folder to start over") from None
    now = json.loads(json.dumps(args))
    if prior != now:
        diff = sorted(k for k in set(prior) | set(now) if prior.get(k) != now.get(k))
        raise ResumeMismatchError(work, f"an unfinished {job} with other arguments ({', '.join(diff)} differ) is "
                                        "here; rerun it with the same arguments, or delete this folder to start over")
    return state


def save_state(work: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(work / STATE_NAME, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


ZARR_PARTIAL = "*.partial"
"""zarr's temporary name for a chunk being written (``KEY.UUID.partial``), renamed onto KEY when complete."""


def remove_interrupted_writes(work: Path) -> int:
    """Delete the temporaries of chunk writes that a killed job left in ``work``'s zarr arrays (a rerun rewrites
    those chunks); returns how many. Left in place they would be installed with the labels, files that no
    manifest lists. Why now: relabel writes on a thread beside the teacher, so a kill can land inside a write."""
    found = [p for p in work.rglob(ZARR_PARTIAL) if p.is_file() and not p.is_symlink()] if work.is_dir() else []
    for p in found:
        p.unlink()
    return len(found)
