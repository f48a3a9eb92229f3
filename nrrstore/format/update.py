"""Adding components (distance tables, soft labels, CAMs) to a finished store.

New files are written first (each atomically, under names no manifest lists yet); the manifest is
then rewritten atomically with their sizes and checksums. A crash in between leaves the old,
still-valid manifest plus unlisted files, which the next run of the same job overwrites.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nrrstore.errors import NrrError
from nrrstore.format.atomic import atomic_write_bytes, file_sha256, fsync_dir
from nrrstore.format.manifest import MANIFEST_NAME, FileEntry, Manifest, load_manifest
from nrrstore.format.writer import collect_files

Progress = Callable[[str, int, "int | None"], None]


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
    entries under ``remove_prefixes`` are dropped from the manifest first (files being replaced);
    ``sections`` replaces top-level manifest sections (``labels``, ``augmentation``, ``method``...).
    """
    root = Path(store)
    m = load_manifest(root)
    keep = [f for f in m.files if not any(f.path == p or f.path.startswith(p.rstrip("/") + "/") for p in remove_prefixes)]
    new: list[FileEntry] = []
    for rel, kind in sorted(kinds.items()):
        p = root / rel
        if not p.exists():
            raise NrrError(p, "new store component is missing")
        if p.is_dir():
            new.extend(replace(e, path=f"{rel.rstrip('/')}/{e.path}", kind=kind) for e in collect_files(p, {}))
        else:
            new.append(FileEntry(rel, p.stat().st_size, file_sha256(p), kind))
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
    return m
