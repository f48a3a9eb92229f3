"""Where a command may write: checks at the door, and folders staged under a hidden name.

Why at the door: a run refused after an hour of work (an existing output, a missing or read-only
folder) wastes the hour, and a refusal half-way leaves things behind. Every command that writes a
file or folder checks its output here before it starts: the parent folder must exist and be
writable, and an existing output is only replaced with ``overwrite`` and, for folders, only when it
is one of ours (it holds the ``marker`` file that our writer puts there).

Why staged: a folder output (a store, shards, an export) is built under a hidden sibling name and
renamed into place when complete, so a crash, a full disk or a kill leaves either the old output or
the new one, never half of one. :class:`StagedFolder` is that one procedure for every command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.atomic import TMP_PREFIX, fsync_dir, is_inside, refuse_link

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

OLD_PREFIX = ".old-"


def local_output(path: str | os.PathLike[str]) -> Path:
    """An output that only a local path can be: a URL is refused, never written as a folder named ``s3:``."""
    loc = fs.location(path)
    if isinstance(loc, fs.Url):
        raise NrrError(path, "this output must be a local path (remote outputs: prepare, distill and relabel)")
    return loc


def check_parent(path: str | os.PathLike[str]) -> None:
    """The folder that will hold ``path`` must exist and be writable (a URL is refused: not a local path)."""
    target = Path(os.path.abspath(local_output(path)))
    if not target.name:
        raise NrrError(path, "cannot write into a file system root")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise NrrError(path, f"parent folder {Path(path).parent} {what}")
    check_writable(parent, path)


def check_writable(folder: str | os.PathLike[str], name: str | os.PathLike[str] | None = None) -> None:
    """``folder`` must accept new files; the error names ``name`` (default: the folder)."""
    if not os.access(folder, os.W_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise NrrError(name if name is not None else folder,
                       "read-only file system" if read_only else f"permission denied (cannot write in {folder})")


def check_output_file(path: str | os.PathLike[str], overwrite: bool, *,
                      inputs: Sequence[Any] | Mapping[str, Any] = (), option: str = "") -> None:
    """A file output: refuse an existing one unless ``overwrite``, never replace a folder, and never write
    inside one of ``inputs`` (local folders such as the store read; a file there would corrupt it).
    ``inputs`` and ``option`` name the options as in `check_not_inside`."""
    p = Path(path)
    check_parent(p)
    check_not_inside(p, inputs, option)
    if p.is_dir():
        raise NrrError(p, "is a folder; give a file name")
    if p.exists() and not overwrite:
        raise NrrError(p, "already exists (use --overwrite to replace it)")


def check_not_inside(path: str | os.PathLike[str], inputs: Sequence[Any] | Mapping[str, Any], option: str = "") -> None:
    """Refuse an output that equals, lies inside, or contains one of the local ``inputs`` (shard folders, a
    store, a validation set, an image tree, a file): writing there would change the input for this run's
    readers and the next run's, and ``--overwrite`` of an output holding an input would delete the input.
    Links and ``..`` are resolved first. ``inputs`` may map option names to paths, which the error then names
    (``--out ... and --in ... overlap``). Entries that are not local paths (URLs, patterns, lists) are skipped."""
    p = Path(path)
    out = p.resolve()
    named = inputs.items() if isinstance(inputs, Mapping) else ((None, root) for root in inputs)
    for name, root in named:
        if root is None or not isinstance(root, (str, os.PathLike)):
            continue
        loc = fs.location(root)
        if not isinstance(loc, Path) or not loc.exists():
            continue
        src = loc.resolve()
        if out == src or (loc.is_dir() and is_inside(out, src)):
            problem = "lies inside"
        elif is_inside(src, out):
            problem = "contains"
        else:
            continue
        what = f"the {option} output" if option else "the output"
        kind = "store" if name == "STORE" else "folder" if loc.is_dir() else "file"
        given = f" ({name})" if name else ""
        raise NrrError(p, f"{what} {problem} the input {kind} {root}{given}: an output may not overlap an input")


def check_output_folder(path: str | os.PathLike[str], overwrite: bool, *, marker: str, kind: str) -> None:
    """A folder output: absent or empty, or ``overwrite`` and a folder of ``kind`` (it holds ``marker``)."""
    p = Path(path)
    check_parent(p)
    if not p.exists():
        return
    if not p.is_dir():
        raise NrrError(p, "exists and is not a folder")
    if not any(p.iterdir()):
        return
    if not overwrite:
        raise NrrError(p, "already exists and is not empty (use --overwrite to replace it)")
    if not (p / marker).is_file():
        raise NrrError(p, f"refusing to overwrite a non-empty folder that is not {kind} (no {marker})")
    foreign = foreign_files(p, marker)
    if foreign:
        raise NrrError(p, f"holds {len(foreign)} file(s) that {kind} does not list ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); --overwrite replaces only what nrrstore wrote: "
                          "move them out first")


def foreign_files(folder: Path, marker: str) -> list[str]:
    """Files in an output folder that its marker (a store's manifest, prepared shards' index) does not list, so
    that ``--overwrite`` never deletes a user's own files kept there. Hidden entries (resume state, locks) are
    nrrstore's; a marker of another kind, or one that cannot be read, lists nothing to compare with."""
    import json

    try:
        doc = json.loads((folder / marker).read_text(encoding="utf-8"))
        if marker == "manifest.json":
            owned = {str(f["path"]) for f in doc["files"]}
        elif marker == "shards.json":
            owned = {str(sh["name"]) for sh in doc["shards"]} | {"classes.txt"}
        else:
            return []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    owned.add(marker)
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [(rel_root / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(f for f in found if f not in owned)


def install_folder(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an old one only after the new one is complete.

    POSIX cannot rename over a non-empty folder, so the old one is moved aside to ``.old-<name>``
    first; a crash in between leaves the complete new folder and the old one, nothing half-written.
    """
    old = final.with_name(f"{OLD_PREFIX}{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


class StagedFolder:
    """A folder output built under a hidden sibling name (``prefix`` + name) and put in place when complete.

    The output is checked at the door (:func:`check_output_folder`: absent, empty, or ``overwrite`` of
    a folder of ``kind`` holding ``marker``). ``with`` creates the staging folder, first removing the
    leftover of a killed run, and removes it again unless :meth:`commit` was reached; :meth:`commit`
    checks the output once more (time has passed) and renames the staging folder into place
    (:func:`install_folder`). ``path`` stages somewhere else than beside the output (a job's work folder).
    """

    def __init__(self, final: str | os.PathLike[str], overwrite: bool, *, marker: str, kind: str,
                 prefix: str = TMP_PREFIX, path: str | os.PathLike[str] | None = None) -> None:
        self.final = Path(final)
        self.overwrite, self.marker, self.kind = overwrite, marker, kind
        check_output_folder(self.final, overwrite, marker=marker, kind=kind)
        target = Path(os.path.abspath(final))  # a name to put the prefix before, even for "." or "x/.."
        self.path = Path(path) if path is not None else target.with_name(f"{prefix}{target.name}")
        self.committed = False

    def create(self) -> Path:
        """An empty staging folder (a killed run's leftover is removed first)."""
        refuse_link(self.path)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        return self.path

    def commit(self) -> None:
        """Put the finished folder in place (replacing an old output of ours only now)."""
        fsync_dir(self.path)
        check_output_folder(self.final, self.overwrite, marker=self.marker, kind=self.kind)
        install_folder(self.path, Path(os.path.abspath(self.final)))
        self.committed = True

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()
