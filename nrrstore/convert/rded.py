"""RDED synthetic-image folders -> stores (``SYN/{class:05d}/class{class:05d}_id{id:05d}.jpg``).

RDED writes images only: its labels are produced at training time by a teacher. So an import gives
a plain store (images, classes, no labels) and `nrrstore.labels.relabel.relabel` then adds DBR
distances from a teacher, rendering every view from the images *as stored*; :func:`import_rded`
runs it right away when given a teacher.

Class index = the number in the class folder's name (RDED's ``class_id``), not the folder's rank,
so a tree holding only some classes keeps the teacher's indices. Store order is (class, id); keys
are ``c{class:05d}_{id:06d}``, the key nrrstore gives synthetic images.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrrstore.convert.passthrough import AsIs, NotAsIs, read_file
from nrrstore.errors import NrrError, os_errors_name, path_text, staged_as
from nrrstore.format import fs
from nrrstore.format.keys import image_key
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_not_inside, local_output
from nrrstore.format.writer import StoreWriter, check_output_dir, staged_store
from nrrstore.progress import Progress
from nrrstore.sources.encode import MODES as IMAGE_MODES
from nrrstore.sources.encode import convert_mode
from nrrstore.sources.imagefolder import IMAGE_FILE_EXTS, read_image_file
from nrrstore.sources.shards import check_class_names, load_class_names

_CLASS_DIR_RE = re.compile(r"^\d+$")
#: The hidden name a store is built and relabelled under before it is put in place.
STAGE_PREFIX = ".import-"
_FILE_RE = re.compile(r"^class(\d+)_id(\d+)\.[A-Za-z]+$")


@dataclass(frozen=True)
class RdedImage:
    path: Path
    label: int
    id: int


def list_rded(root: str | os.PathLike[str]) -> tuple[list[str], list[RdedImage]]:
    """The class folder names (by class number) and every image, in (class, id) order."""
    root = Path(root)
    if not root.is_dir():
        raise NrrError(root, "no such folder" if not root.exists() else "not a folder (expected RDED's {class:05d}/ folders)")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not folders:
        raise NrrError(root, "no class folders (expected RDED's {class:05d}/class{class:05d}_id{id:05d}.jpg)")
    names: dict[int, str] = {}
    images: list[RdedImage] = []
    for folder in folders:
        if not _CLASS_DIR_RE.match(folder.name):
            raise NrrError(folder, "not an RDED class folder (its name must be the class number, e.g. 00007)")
        c = int(folder.name)
        if c in names:
            raise NrrError(folder, f"class {c} has two folders ({names[c]} and {folder.name})")
        names[c] = folder.name
        found = []
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or not f.is_file() or not f.name.lower().endswith(IMAGE_FILE_EXTS):
                continue
            m = _FILE_RE.match(f.name)
            if not m:
                raise NrrError(f, "not an RDED image name (expected class{class:05d}_id{id:05d}.jpg)")
            if int(m.group(1)) != c:
                raise NrrError(f, f"names class {int(m.group(1))} but lies in the folder of class {c}")
            found.append(RdedImage(f, c, int(m.group(2))))
        if not found:
            raise NrrError(folder, "no images in this class folder")
        ids = sorted(found, key=lambda r: r.id)
        for a, b in itertools.pairwise(ids):
            if a.id == b.id:
                raise NrrError(b.path, f"image id {b.id} of class {c} appears twice ({a.path.name})")
        images.extend(ids)
    top = max(names)
    return [names.get(i, f"{i:05d}") for i in range(top + 1)], images


def import_rded(
    syn_data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    classes: Sequence[str] | str | os.PathLike[str] | None = None,
    image_format: str | None = None,
    quality: int | None = None,
    mode: str = "keep",
    shard_size: int = 1024,
    overwrite: bool = False,
    teacher: Any = None,
    epochs: int | None = None,
    relabel_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the RDED tree ``syn_data`` as a store at ``out``; with ``teacher``, relabel it for ``epochs``.

    ``classes``: names (or a file of names, line i = class i) instead of the folder names; every
    folder's class number must then be below their count. A tree that lacks a class folder is refused
    unless ``classes`` names every class (the missing ones then hold no images). ``image_format`` None
    (default) keeps the source files' bytes when every image can be stored as it is (see
    :mod:`nrrstore.convert.passthrough`), else re-encodes as png; png, webp or jpg re-encode (relabel
    reads the stored images, so a lossy re-encode is what the teacher labels). ``mode`` ``keep`` takes
    the teacher's channels when there is a teacher (RDED writes RGB JPEGs even for grey data, which
    then cannot pass through for a grey teacher). With a teacher the store is built and relabelled
    under a hidden name and put in place only when both succeed, so a failed relabel leaves no
    unlabelled store.
    ``relabel_options``: further keyword arguments of `relabel` (precision, seed, device...).
    """
    t0 = time.perf_counter()
    if mode not in IMAGE_MODES:
        raise NrrError(None, f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
    if epochs is not None and teacher is None:
        raise NrrError(None, "epochs given without a teacher: relabelling needs --teacher")
    root = Path(syn_data)
    if isinstance(fs.location(out), Path):
        check_not_inside(out, {"SYN_DATA": root}, "--out")
    folder_names, images = list_rded(root)
    names = _class_names(root, folder_names, images, classes)
    if teacher is not None:
        mode = _teacher_mode(teacher, mode, len(names))
    check_output_dir(Path(out), overwrite)
    total_bytes = sum(r.path.stat().st_size for r in images)
    source = {"format": "rded", "path": path_text(root.resolve()), "bytes": total_bytes, "files": len(images),
              "total_bytes": total_bytes}
    out = local_output(out)
    method = {"import": {"from": "rded", "image_mode": mode}}
    summary: dict[str, Any] = {"store": str(out), "images": len(images), "classes": len(names),
                               "source_bytes": total_bytes, "image_mode": mode}
    with output_lock(out), os_errors_name(out):
        # with a teacher the store is built and relabelled under a hidden name, and put in place after both
        stage = staged_store(out, overwrite, prefix=STAGE_PREFIX) if teacher is not None else None
        target = stage.path if stage is not None else out
        try:
            if stage is not None:
                stage.create()  # removing the leftover of a killed run

            def write(as_is: AsIs | None, fmt: str | None, why: str) -> str:
                return _write(root, images, target, names, source, method, as_is, fmt, quality, mode, shard_size,
                              overwrite, progress, why)

            summary["images_stored"] = _write_as_is_or_encoded(write, image_format, mode)
            summary["import_seconds"] = round(time.perf_counter() - t0, 3)
            if stage is not None:
                from nrrstore.labels.relabel import relabel

                summary["relabel"] = relabel(stage.path, teacher, 300 if epochs is None else epochs, progress=progress,
                                             **(relabel_options or {}))
                summary["relabel"]["store"] = str(out)
                stage.commit()
        except BaseException as exc:
            if stage is not None:
                stage.discard()
                if isinstance(exc, NrrError) and staged_as(exc, stage.path, out) is not exc:
                    raise staged_as(exc, stage.path, out) from None
            raise
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _write_as_is_or_encoded(write: Callable[[AsIs | None, str | None, str], str], image_format: str | None,
                            mode: str) -> str:
    """The asked format; by default the source bytes as they are, else (one image cannot pass) all as PNG."""
    if image_format is not None:
        return write(None, image_format, f"--image-format {image_format}")
    try:
        return write(AsIs(mode), None, "")
    except NotAsIs as exc:  # one image cannot pass through: start over, re-encoding all
        return write(None, "png", exc.why)


def _class_names(root: Path, folder_names: list[str], images: list[RdedImage],
                 classes: Sequence[str] | str | os.PathLike[str] | None) -> list[str]:
    """The store's class names: given (a list or a file), else the folders', refusing gaps and extra classes."""
    if isinstance(classes, (str, os.PathLike)):
        names = load_class_names(classes)
    elif classes is not None:
        names = check_class_names(list(classes))
    else:
        missing = sorted(set(range(len(folder_names))) - {r.label for r in images})
        if missing:
            raise NrrError(root / f"{missing[0]:05d}", f"class folder missing ({len(missing)} of classes 0.."
                                                       f"{len(folder_names) - 1} have none); pass --classes with "
                                                       "every class name to import a partial set")
        names = check_class_names(folder_names, root)
    if len(folder_names) > len(names):
        raise NrrError(images[-1].path.parent, f"class {len(folder_names) - 1} is beyond the {len(names)} class names given")
    return names


def _write(root: Path, images: list[RdedImage], out: str | os.PathLike[str], names: list[str], source: dict[str, Any],
           method: dict[str, Any], as_is: AsIs | None, image_format: str | None, quality: int | None, mode: str,
           shard_size: int, overwrite: bool, progress: Progress | None, why: str) -> str:
    """Write the store: as-is bytes (``as_is``; `NotAsIs` when an image cannot be) or re-encoded; says which."""
    w: StoreWriter | None = None
    try:
        for i, r in enumerate(images):
            key, meta = image_key(r.label, r.id), {"source": path_text(r.path.relative_to(root))}
            data = read_file(r.path) if as_is is not None else None
            head = as_is.check(data, path_text(r.path)) if as_is is not None and data is not None else None
            if w is None:
                w = StoreWriter(out, names, image_format=head.ext if head else image_format or "png", quality=quality,
                                shard_size=shard_size, overwrite=overwrite, source=source, method=method)
            if head is not None and data is not None:
                w.add_encoded(key, data, r.label, meta, path_text(r.path), header=head)
            else:
                w.add_image(key, convert_mode(read_image_file(r.path), mode), r.label, meta)
            if progress:
                progress("import images", i + 1, len(images))
        assert w is not None  # list_rded refuses an empty tree
        stored = f"as is ({w.image_format})" if as_is is not None else f"re-encoded as {w.image_format}: {why}"
        w.set_meta("source", {**source, "stored": stored})
        w.finalize(progress)
        return stored
    finally:
        if w is not None:
            w.__exit__(None, None, None)


def _teacher_mode(teacher: Any, mode: str, num_classes: int) -> str:
    """The image mode that feeds ``teacher``, checked before anything is written."""
    want = "L" if teacher.in_channels == 1 else "RGB"
    if mode not in ("keep", want):
        raise NrrError("--mode", f"the teacher takes {teacher.in_channels} channel(s) but --mode {mode} gives "
                                 f"{1 if mode == 'L' else 3}; use --mode {want}")
    if teacher.num_classes != num_classes:
        raise NrrError(teacher.spec, f"teacher has {teacher.num_classes} classes but the RDED tree has {num_classes}")
    return want  # with keep: RDED saves RGB JPEGs even for grey data, so take the teacher's channels
