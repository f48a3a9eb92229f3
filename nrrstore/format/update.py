"""Adding components (distance tables, soft labels, CAMs) to a finished store.

New files are written first (each atomically, under names no manifest lists yet); the manifest is
then rewritten atomically with their sizes and checksums, and only then are the files it no longer
lists deleted. A crash in between leaves a valid manifest plus unlisted files, which the next run
of the same job overwrites (or deletes).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.atomic import atomic_write_bytes, file_sha256, fsync_dir
from nrrstore.format.layout import MANIFEST_NAME
from nrrstore.format.manifest import FileEntry, Manifest, load_manifest
from nrrstore.format.writer import collect_files
from nrrstore.progress import Progress


def update_store(
    store: str | os.PathLike[str],
    *,
    kinds: dict[str, str],
    remove_prefixes: tuple[str, ...] = (),
    sections: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Record new files and manifest sections in an existing store.

    ``kinds`` maps new relative paths (files or folders, e.g. a zarr array) to their kind;
    entries under ``remove_prefixes`` are dropped from the manifest (files being replaced), and their
    files that the new manifest does not list again are deleted after it is written;
    ``sections`` replaces top-level manifest sections (``labels``, ``augmentation``, ``method``...).
    """
    root = Path(store)
    m = load_manifest(root)
    dropped = {f.path for f in m.files if any(f.path == p or f.path.startswith(p.rstrip("/") + "/") for p in remove_prefixes)}
    keep = [f for f in m.files if f.path not in dropped]
    new: list[FileEntry] = []
    for rel, kind in sorted(kinds.items()):
        p = root / rel
        if fs.is_file(p):
            new.append(FileEntry(rel, fs.file_size(p), file_sha256(p), kind))
        elif p.is_dir():
            new.extend(replace(e, path=f"{rel.rstrip('/')}/{e.path}", kind=kind) for e in collect_files(p, {}))
        else:
            raise NrrError(p, "new store component is missing")
        if progress:
            progress("hashing", len(new), None)
    paths = {f.path for f in new}
    files = sorted([f for f in keep if f.path not in paths] + new, key=lambda f: f.path)
    m.files = files
    for name, value in (sections or {}).items():
        if not hasattr(m, name) or name in ("files", "classes", "image", "num_images", "per_class", "shards"):
            raise KeyError(name)
        setattr(m, name, value)
    atomic_write_bytes(root / MANIFEST_NAME, m.to_json().encode())
    fsync_dir(root)
    for rel in sorted(dropped - {f.path for f in files}):
        fs.remove(root / rel)
        fs.remove_empty_parents(root / rel, root)
    return m
