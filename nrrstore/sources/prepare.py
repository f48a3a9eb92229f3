"""Convert raw labelled images (IDX files, ImageFolder trees) into WebDataset shards.

The output folder is what every nrrstore command reads as input: ``{prefix}-000000.tar`` ... with
``<key>.png`` + ``<key>.cls`` per sample, ``classes.txt`` (line i = name of class i) and
``shards.json`` (counts, sizes and sha256 of each shard; informational, readers do not need it).

Why a whole-folder rename: a killed conversion must not leave a folder that looks complete but
misses its last shards, so everything is written into ``.tmp-<name>`` beside the target and renamed
into place at the end. Bytes are deterministic (fixed encoder settings, tar mtime 0, gzip mtime 0
with no file name), so two runs give identical sha256 with the same Pillow/zlib build.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from nrrstore.format.atomic import is_inside
from nrrstore.errors import NrrError
from nrrstore.format.atomic import atomic_open, atomic_write_bytes, file_sha256, fsync_dir
from nrrstore.format.images import MAX_PIXELS, encode_image
from nrrstore.format.keys import check_key
from nrrstore.format.tario import TarShardWriter
from nrrstore.sources.idx import read_idx_pair
from nrrstore.sources.imagefolder import list_imagefolder, read_image_file
from nrrstore.sources.shards import check_class_names, load_class_names

Progress = Callable[[str, int, "int | None"], None]

SHARDS_INDEX = "shards.json"
SHARDS_FORMAT = "nrrstore-prepared-shards"
SHARDS_VERSION = 1
MODES = ("keep", "L", "RGB")
_IMAGE_FORMATS = ("png", "webp", "jpg")
_PROGRESS_EVERY = 64


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber anything that is not an earlier `prepare` output (fail before any work)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise NrrError(out_dir, "exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise NrrError(out_dir, "already exists and is not empty (pass overwrite to replace it)")
    if not (out_dir / SHARDS_INDEX).is_file():
        raise NrrError(out_dir, f"not a folder made by prepare (no {SHARDS_INDEX}); refusing to replace it")


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    _check_target(out_dir, overwrite)
    if out_dir.exists() and any(out_dir.iterdir()):
        # POSIX cannot rename over a non-empty folder: move the old one aside first. A crash in
        # between leaves the complete new output as .tmp-<name> and the old one as .old-<name>.
        old = out_dir.with_name(f".old-{out_dir.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # also replaces an empty folder
    fsync_dir(out_dir.parent)


def convert_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """``keep`` the image as is, or make it grey (``L``, ITU-R 601 luma as Pillow) or ``RGB``."""
    if mode == "keep":
        return image
    if mode == "L":
        return image if image.ndim == 2 else np.asarray(Image.fromarray(image, "RGB").convert("L"))
    if mode == "RGB":
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    raise NrrError(None, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


def _finish_shard(writer: TarShardWriter, gzip: bool) -> Path:
    writer.close()
    if not gzip:
        return writer.path
    final = writer.path.with_name(writer.path.name + ".gz")
    with atomic_open(final) as raw, open(writer.path, "rb") as src:
        # filename="" and mtime=0 keep the gzip header free of names and times.
        with gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
    writer.path.unlink()
    return final


def write_shards(
    samples: Iterable[tuple[str, np.ndarray, int]],
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    shard_size: int = 1000,
    prefix: str = "train",
    gzip: bool = False,
    image_format: str = "png",
    mode: str = "keep",
    overwrite: bool = False,
    total: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``(key, image, label)`` samples as shards of ``shard_size`` into ``out_dir``, atomically.

    Returns the summary also stored as ``shards.json`` (plus ``out_dir``). An existing non-empty
    ``out_dir`` is refused unless ``overwrite`` and it is an earlier `prepare` output.
    """
    out_dir = Path(out_dir)
    names = check_class_names(class_names)
    check_key(prefix, "prefix")
    if shard_size < 1:
        raise NrrError(None, f"shard size must be at least 1, got {shard_size}")
    if image_format not in _IMAGE_FORMATS:
        raise NrrError(None, f"unknown image format {image_format!r}; use one of {', '.join(_IMAGE_FORMATS)}")
    if mode not in MODES:
        raise NrrError(None, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    target = Path(os.path.abspath(out_dir))  # a name to put ".tmp-" before, even for "." or "x/.."
    if not target.name:
        raise NrrError(out_dir, "cannot write shards into a file system root")
    _check_target(target, overwrite)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # the leftover of a killed run
    tmp.mkdir(parents=True)

    shards: list[dict[str, Any]] = []
    per_class = [0] * len(names)
    seen: set[str] = set()
    count = 0
    writer: TarShardWriter | None = None

    def close_current() -> None:
        nonlocal writer
        assert writer is not None
        done, writer = writer, None
        path = _finish_shard(done, gzip)
        n = done.count
        shards.append({"name": path.name, "count": n, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
        if progress is not None:
            progress("write shards", count, total)

    try:
        for key, image, label in samples:
            check_key(key)
            if key in seen:
                raise NrrError(None, f"duplicate key {key!r}")
            seen.add(key)
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(names):
                raise NrrError(None, f"sample {key!r}: label {label!r} outside the {len(names)} classes")
            data = encode_image(convert_mode(np.asarray(image), mode), image_format)
            if writer is not None and writer.count >= shard_size:
                close_current()
            if writer is None:
                writer = TarShardWriter(tmp / f"{prefix}-{len(shards):06d}.tar")
            writer.add(key, {image_format: data, "cls": str(int(label)).encode()})
            per_class[int(label)] += 1
            count += 1
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress("write shards", count, total)
        if writer is None:
            raise NrrError(None, "no samples to write")
        close_current()
        index = {
            "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "prefix": prefix, "count": count,
            "num_classes": len(names), "per_class": per_class, "shard_size": shard_size,
            "image_format": image_format, "gzip": gzip, "shards": shards,
        }
        atomic_write_bytes(tmp / "classes.txt", "".join(f"{n}\n" for n in names).encode("utf-8"))
        atomic_write_bytes(tmp / SHARDS_INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        fsync_dir(tmp)
        _install(tmp, target, overwrite)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**index, "out_dir": os.fspath(out_dir), "bytes": sum(s["bytes"] for s in shards)}


def select_indices(labels: np.ndarray, per_class: int | None = None, limit: int | None = None,
                   skip: int = 0) -> np.ndarray:
    """Indices to keep, in file order: after the first ``skip`` images, the first ``per_class`` of each
    class, then the first ``limit``. (``skip`` carves a validation split: ``--limit 50000`` and
    ``--skip 50000`` of one file are disjoint.)"""
    if skip < 0:
        raise NrrError(None, f"skip must be at least 0, got {skip}")
    idx = np.arange(len(labels))
    if skip:
        rest = select_indices(labels[skip:], per_class, limit)
        if len(rest) == 0:
            raise NrrError(None, f"skipping {skip} images leaves none (the file has {len(labels)})")
        return rest + skip
    if per_class is not None:
        if per_class < 1:
            raise NrrError(None, f"per-class count must be at least 1, got {per_class}")
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        rank = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
        idx = np.sort(order[rank < per_class])
    if limit is not None:
        if limit < 1:
            raise NrrError(None, f"limit must be at least 1, got {limit}")
        idx = idx[:limit]
    return idx


def class_names_from_arg(value: str) -> list[str]:
    """A class-names file (``.txt`` one per line, or ``.json``) or a comma-separated list."""
    if Path(value).is_file():
        return load_class_names(value)
    if "," in value:
        return check_class_names(value.split(","), "class list")
    raise NrrError(value, "not a class-names file, nor a comma-separated list of names")


def prepare_idx(
    images: str | os.PathLike[str] | np.ndarray,
    labels: str | os.PathLike[str] | np.ndarray,
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    per_class: int | None = None,
    limit: int | None = None,
    shard_size: int = 1000,
    prefix: str = "train",
    gzip: bool = False,
    image_format: str = "png",
    mode: str = "keep",
    overwrite: bool = False,
    progress: Progress | None = None,
    skip: int = 0,
) -> dict[str, Any]:
    """IDX images + labels (paths, or arrays already read) -> shards. Key = ``{prefix}_{source index:07d}``.

    Without ``class_names`` the classes are named ``"0"``..``"K-1"`` for the largest label K-1.
    """
    _check_target(Path(out_dir), overwrite)
    if isinstance(images, np.ndarray) or isinstance(labels, np.ndarray):
        imgs, labs = np.asarray(images), np.asarray(labels).astype(np.int64)
        if len(imgs) != len(labs):
            raise NrrError(None, f"{len(imgs)} images but {len(labs)} labels")
        labels_where = None
    else:
        imgs, labs = read_idx_pair(images, labels)
        labels_where = os.fspath(labels)
    if len(labs) == 0:
        raise NrrError(labels_where, "no images")
    top = int(labs.max())
    if class_names is None:
        class_names = [str(i) for i in range(top + 1)]
    elif top >= len(class_names):
        raise NrrError(labels_where, f"label {top} found but only {len(class_names)} class names were given")
    idx = select_indices(labs, per_class, limit, skip)
    samples = ((f"{prefix}_{i:07d}", imgs[i], int(labs[i])) for i in idx)
    summary = write_shards(
        samples, out_dir, class_names, shard_size=shard_size, prefix=prefix, gzip=gzip,
        image_format=image_format, mode=mode, overwrite=overwrite, total=len(idx), progress=progress,
    )
    return summary


def prepare_imagefolder(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    per_class: int | None = None,
    limit: int | None = None,
    shard_size: int = 1000,
    prefix: str = "train",
    gzip: bool = False,
    image_format: str = "png",
    mode: str = "keep",
    overwrite: bool = False,
    max_pixels: int = MAX_PIXELS,
    progress: Progress | None = None,
    skip: int = 0,
) -> dict[str, Any]:
    """``ROOT/<class>/<image>`` -> shards; class names are the folder names in sorted order.

    Key = ``{prefix}_{i:07d}`` with i the file's position in the sorted listing of the whole tree.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    root = Path(root)
    classes, entries = list_imagefolder(root)
    if is_inside(out_dir, root):
        raise NrrError(out_dir, f"the output folder may not lie inside the input tree {root}")
    idx = select_indices(np.array([e.label for e in entries], dtype=np.int64), per_class, limit, skip)

    def samples() -> Iterator[tuple[str, np.ndarray, int]]:
        for i in idx:
            entry = entries[int(i)]
            yield f"{prefix}_{int(i):07d}", read_image_file(entry.path, max_pixels), entry.label

    return write_shards(
        samples(), out_dir, classes, shard_size=shard_size, prefix=prefix, gzip=gzip,
        image_format=image_format, mode=mode, overwrite=overwrite, total=len(idx), progress=progress,
    )

