"""What made a result: the commit, torch and Python versions, the device, the thread count and the date, written
into every benchmark and study cell so that a committed figure says where it came from (issue 30)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def provenance(threads: int | None = None) -> dict[str, Any]:
    """The provenance record; a working tree with uncommitted changes is marked ``+dirty``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no", "nrrstore", "cli"):
        commit += "+dirty"
    return {"commit": commit, "torch": torch.__version__, "python": platform.python_version(),
            "device": f"cpu: {platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads() if threads is None else threads,
            "date": datetime.date.today().isoformat()}
