"""Worker processes that die with their parent.

A pool or loader worker outlives a parent killed with SIGKILL: it is re-parented to init, keeps its memory and
the file descriptors it inherited (an output's lock among them, so a rerun is refused in the dead parent's
name). On Linux a child can ask the kernel for a signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
`die_with_parent` asks for SIGKILL, called first thing in every worker. Elsewhere it does nothing (torch's
loader workers still notice a dead parent within seconds).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel kill this process when its parent dies; exit now if it is already gone (``parent_pid``:
    the parent as the caller knew it, to close the race between fork and this call)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
