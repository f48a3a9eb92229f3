"""The file-system seam of the storage layer: the few operations its writers and checkers need.

Component writers write through :func:`~nrrstore.format.atomic.atomic_open`, readers through a
`Store`'s ``_table_source``/``_read_span``; everything else they do to files (list, size, move,
remove) goes through these functions, so that another file system (fsspec) has one place to plug in.
Paths are local paths here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def list_files(root: str | os.PathLike[str]) -> list[str]:
    """Every file under ``root`` as a ``/``-separated path relative to it, sorted folder by folder."""
    base = Path(root)
    return [p.relative_to(base).as_posix() for p in sorted(base.rglob("*")) if p.is_file()]


def is_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_file()


def file_size(path: str | os.PathLike[str]) -> int:
    return Path(path).stat().st_size


def make_dirs(path: str | os.PathLike[str]) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def move(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` (a file, or a folder onto a missing or empty one)."""
    os.replace(src, dst)


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file or a whole folder; a missing one is not an error."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_empty_parents(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Delete the folders above ``path`` that are left empty, up to (not including) ``root``."""
    top = Path(root)
    for parent in Path(path).parents:
        if parent == top or top not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone): the folders above are not empty either
            return
