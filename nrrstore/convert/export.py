"""Exporting a store as an ImageFolder tree for training scripts that expect class folders.

``DIR/<class folder>/<key>.<ext>`` holds each image's stored bytes unchanged (PNG for stores made
by nrrstore unless another encoding was chosen), ``DIR/distances.parquet`` (and optionally
``distances.csv``) the DBR distances joined to keys: ``epoch, image, key, label, path, d_org, d_aug``
(float32, int8 codes decoded) plus the view columns of explicit-mode stores. ``classes.txt`` lists the
class folders in class-index order and ``export.json`` describes the export.

Class folder names are the class names made safe for file systems. Note that torchvision's ImageFolder
numbers classes by *sorted folder name*, which may differ from the store's class order;
``numbered=True`` prefixes ``{index:05d}-`` so that both agree (the ``label`` column is the store's).

Atomic: everything is written into a hidden folder beside ``DIR`` and renamed into place at the end
(:class:`~nrrstore.format.outputs.StagedFolder`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from nrrstore.errors import NrrError, os_errors_name
from nrrstore.format.distances import read_epoch_labels
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import StagedFolder, check_not_inside, check_output_folder, local_output
from nrrstore.format.parquet import RowGroupFile
from nrrstore.format.reader import Store
from nrrstore.format.tables import EXPLICIT_COLUMNS
from nrrstore.format.tario import iter_tar_samples
from nrrstore.progress import Progress

EXPORT_MARKER = "export.json"
EXPORT_KIND = "an nrrstore export"
FORMATS = ("imagefolder",)
_BAD = re.compile(r"[^A-Za-z0-9._ +-]+")


def folder_names(classes: list[str], numbered: bool = False) -> list[str]:
    """Safe, unique, non-hidden folder names for ``classes`` (in class order)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(classes):
        safe = _BAD.sub("_", name).strip(" .") or f"class{i:05d}"
        safe = f"{i:05d}-{safe}" if numbered else safe
        safe = safe[:200]
        if safe.lower() in seen:  # case-insensitive file systems too
            safe = f"{safe[:190]}-{i:05d}"
        seen.add(safe.lower())
        out.append(safe)
    return out


def export_imagefolder(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    csv: bool = False,
    numbered: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``store`` as an ImageFolder tree at ``out`` with its distances joined to keys."""
    t0 = time.perf_counter()
    st = Store(store)
    out = local_output(out)
    if isinstance(st.path, Path):
        check_not_inside(out, {"STORE": st.path}, "--to")
    _check_target(out, overwrite)
    with output_lock(out), os_errors_name(out):
        return _export(st, out, csv, numbered, overwrite, progress, t0)


def _export(st: Store, out: Path, csv: bool, numbered: bool, overwrite: bool, progress: Progress | None,
            t0: float) -> dict[str, Any]:
    m = st.manifest
    folders = folder_names(m.classes, numbered)
    with StagedFolder(out, overwrite, marker=EXPORT_MARKER, kind=EXPORT_KIND) as stage:
        tmp = stage.path
        for f in folders:
            (tmp / f).mkdir()
        index = st.index
        keys = index.column("key").to_pylist()
        labels = index.column("label").to_numpy()
        exts = index.column("ext").to_pylist()
        paths = [f"{folders[int(y)]}/{k}.{e}" for k, y, e in zip(keys, labels, exts, strict=True)]
        done = 0
        for shard in m.shards:
            for key, members in iter_tar_samples(st.path / shard):
                i = done
                if i >= len(keys) or keys[i] != key:
                    raise NrrError(st.path / shard, f"sample {key!r} is out of step with the index")
                (tmp / paths[i]).write_bytes(members[exts[i]])
                done += 1
                if progress:
                    progress("export images", done, m.num_images)
        if done != m.num_images:
            raise NrrError(st.path, f"shards hold {done} images, the manifest says {m.num_images}")
        files = ["classes.txt", EXPORT_MARKER]
        (tmp / "classes.txt").write_text("".join(f"{f}\n" for f in folders), encoding="utf-8")
        epochs = st.num_epochs
        if st.distance_files():
            _write_distances(st, tmp, keys, labels, paths, csv, progress)
            files += ["distances.parquet"] + (["distances.csv"] if csv else [])
        info = {
            "format": "nrrstore-export", "version": 1, "layout": "imagefolder",
            "store": str(st.path.resolve() if isinstance(st.path, Path) else st.path),
            "classes": [{"index": i, "name": n, "folder": f} for i, (n, f) in enumerate(zip(m.classes, folders, strict=True))],
            "images": m.num_images, "epochs": epochs,
            "distance_columns": "epoch, image, key, label, path, d_org, d_aug (float32)"
            + (", " + ", ".join(EXPLICIT_COLUMNS) if (m.labels.get("distances") or {}).get("mode") == "explicit" else ""),
            "sorted_folders_match_class_order": sorted(folders) == folders,
        }
        (tmp / EXPORT_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        stage.commit()
    return {"out": str(out), "images": m.num_images, "classes": len(folders), "epochs": epochs,
            "files": sorted(files), "sorted_folders_match_class_order": info["sorted_folders_match_class_order"],
            "seconds": round(time.perf_counter() - t0, 3)}


def _write_distances(st: Store, tmp: Path, keys: list[str], labels: np.ndarray, paths: list[str], csv: bool,
                     progress: Progress | None) -> None:
    """One epoch at a time: ``distances.parquet`` gets one row group per epoch, the CSV is streamed."""
    n = st.num_images
    label_col = labels.astype(np.int32)
    with RowGroupFile(tmp / "distances.parquet", csv=tmp / "distances.csv" if csv else None) as table:
        for e in range(st.num_epochs):
            lab = read_epoch_labels(st, e)
            table.write({"epoch": np.full(n, e, np.int32), "image": np.arange(n, dtype=np.int32), "key": keys,
                         "label": label_col, "path": paths, "d_org": lab.d_org, "d_aug": lab.d_aug, **(lab.views or {})})
            if progress:
                progress("export distances", e + 1, st.num_epochs)


def _check_target(out: Path, overwrite: bool) -> None:
    check_output_folder(out, overwrite, marker=EXPORT_MARKER, kind=EXPORT_KIND)
