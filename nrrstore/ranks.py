"""The distributed context, in one place: rank, world size, barrier, and what a stopped job leaves.

distill and relabel split work over ``torchrun`` ranks, and the loader splits batches over them; all
of them ask this module, so a process group is read (or started from torchrun's environment) one way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nrrstore.errors import NrrError, ResumeMismatchError, os_problem


def dist_info() -> tuple[int, int]:
    """(rank, world size): from an initialised process group, or from torchrun's environment (which it
    then initialises: gloo on CPU, nccl with CUDA), else (0, 1)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available():
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) for a reader: the given values, else an initialised process group's, else (0, 1).

    A DDP job that forgets to pass them must not read the whole data on every rank (each rank would
    train on duplicated data without a word); a given value that contradicts the process group is refused.
    Unlike `dist_info`, this never starts a process group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        group = (dist.get_rank(), dist.get_world_size())
        for name, given, actual in (("rank", rank, group[0]), ("world_size", world_size, group[1])):
            if given is not None and given != actual:
                raise NrrError(None, f"{name}={given} contradicts the initialised torch.distributed process group "
                                     f"({name} {actual}); leave it out to use the group's")
        return group
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in a one-rank job)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def stopped_error(exc: BaseException, target: Path, work: Path, finished: int, kept: str, world: int) -> BaseException:
    """What a failed job leaves: nothing when no unit of work was finished, else the finished ones, and says so.

    A bad input found before the first unit is done must not leave a work folder behind (with several
    ranks another one may still be writing there, so only a one-rank job removes it); work that took time
    is kept for a resume, and ``kept`` (added to the message) says what was kept and how to resume or discard
    it. An operating-system error is named after ``target``.
    """
    if isinstance(exc, OSError):
        exc = NrrError(target, os_problem(exc))
    if finished == 0:
        if world == 1:
            shutil.rmtree(work, ignore_errors=True)
        return exc
    if isinstance(exc, NrrError) and not isinstance(exc, ResumeMismatchError):
        return NrrError(exc.path, f"{exc.problem}; {kept}")
    return exc
