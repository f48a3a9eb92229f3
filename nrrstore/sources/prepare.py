"""Convert raw labelled images (IDX files, ImageFolder trees) into WebDataset shards.

The output folder is what every nrrstore command reads as input: ``{prefix}-000000.tar`` ... with
``<key>.png`` + ``<key>.cls`` per sample, ``classes.txt`` (line i = name of class i) and
``shards.json`` (counts, sizes and sha256 of each shard; informational, readers do not need it).

Why a whole-folder rename: a killed conversion must not leave a folder that looks complete but
misses its last shards, so everything is written into a hidden folder beside the target and renamed
into place at the end (:class:`~nrrstore.format.outputs.StagedFolder`). Bytes are deterministic (fixed encoder settings, tar mtime 0, gzip mtime 0
with no file name), so two runs give identical sha256 with the same Pillow/zlib build.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nrrstore.errors import NrrError, os_errors_name
from nrrstore.format import fs, remote
from nrrstore.format.atomic import atomic_open, atomic_write_bytes, file_sha256
from nrrstore.format.images import MAX_PIXELS
from nrrstore.format.keys import check_key
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import StagedFolder, check_not_inside, check_output_folder
from nrrstore.format.tario import TarShardWriter
from nrrstore.progress import Progress
from nrrstore.sources.encode import IMAGE_FORMATS as _IMAGE_FORMATS
from nrrstore.sources.encode import MODES, Encoded, Failure, SourceImage, encode_sample
from nrrstore.sources.idx import read_idx_pair
from nrrstore.sources.imagefolder import FolderEntry, list_imagefolder
from nrrstore.sources.shards import SHARD_SUFFIXES, check_class_names, load_class_names
from nrrstore.sources.workers import EncodeJob, EncodePool, FileResult, check_workers

SHARDS_INDEX = "shards.json"
SHARDS_FORMAT = "nrrstore-prepared-shards"
SHARDS_VERSION = 1
_PROGRESS_EVERY = 64


PREPARED_KIND = "a folder made by prepare"


SampleIn = tuple[str, "np.ndarray | SourceImage | Encoded", int]
"""``(key, image, label)``; an `Encoded` image is one a worker process already converted and encoded."""


def _check_target(out_dir: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse to clobber anything that is not an earlier `prepare` output (fail before any work)."""
    loc = fs.writable_location(out_dir)
    if isinstance(loc, fs.Url):
        remote.check_remote_output(loc, overwrite, marker=SHARDS_INDEX, kind=PREPARED_KIND, ours=_prepared_object)
    else:
        check_output_folder(loc, overwrite, marker=SHARDS_INDEX, kind=PREPARED_KIND)


def _prepared_object(rel: str) -> bool:
    """What a prepare output holds besides its marker (an unfinished remote one may hold these)."""
    return rel == "classes.txt" or rel.endswith(SHARD_SUFFIXES)


def default_prefix(images: str | os.PathLike[str] | np.ndarray) -> str:
    """The shard prefix an input file's name suggests (``{prefix}-000000.tar``, keys ``{prefix}_...``).

    The part before ``-images``/``-labels``/``-idx``: ``train-images-idx3-ubyte.gz`` -> ``train``;
    MNIST's test files ``t10k-...`` -> ``test``; other names give their stem (``img.gz`` -> ``img``);
    arrays give ``train``.
    """
    if isinstance(images, np.ndarray):
        return "train"
    name = re.sub(r"\.gz$", "", Path(images).name, flags=re.IGNORECASE)
    stem = re.split(r"[-_.](?:images|labels|imgs|idx\d)", name, maxsplit=1, flags=re.IGNORECASE)[0]
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", stem) if stem == name else stem
    key = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:100] or "train"
    return {"t10k": "test"}.get(key.lower(), key)


def _finish_shard(writer: TarShardWriter, gzip: bool) -> Path:
    writer.close()
    if not gzip:
        return writer.path
    final = writer.path.with_name(writer.path.name + ".gz")
    # filename="" and mtime=0 keep the gzip header free of names and times.
    with (atomic_open(final) as raw, open(writer.path, "rb") as src,
          gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz):
        shutil.copyfileobj(src, gz, 1 << 20)
    writer.path.unlink()
    return final


def write_shards(
    samples: Iterable[SampleIn],
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
    resize: int | None = None,
) -> dict[str, Any]:
    """Write ``(key, image, label)`` samples as shards of ``shard_size`` into ``out_dir``, atomically.

    Returns the summary also stored as ``shards.json`` (plus ``out_dir``). An existing non-empty
    ``out_dir`` is refused unless ``overwrite`` and it is an earlier `prepare` output. ``resize``
    makes every image ``resize x resize`` (`resize_square`). The output is locked while it is written
    (`nrrstore.format.lock`); an operating-system error (a full disk) names ``out_dir``.
    """
    loc = fs.writable_location(out_dir)
    if isinstance(loc, fs.Url):
        return _write_remote(samples, loc, class_names, shard_size=shard_size, prefix=prefix, gzip=gzip,
                             image_format=image_format, mode=mode, overwrite=overwrite, total=total,
                             progress=progress, resize=resize)
    out_dir = loc
    names = check_class_names(class_names)
    check_key(prefix, "prefix")
    if shard_size < 1:
        raise NrrError(None, f"shard size must be at least 1, got {shard_size}")
    if image_format not in _IMAGE_FORMATS:
        raise NrrError(None, f"unknown image format {image_format!r}; use one of {', '.join(_IMAGE_FORMATS)}")
    if mode not in MODES:
        raise NrrError(None, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise NrrError(None, f"resize must be a positive number of pixels, got {resize!r}")
    target = Path(os.path.abspath(out_dir))
    if not target.name:
        raise NrrError(out_dir, "cannot write shards into a file system root")
    _check_target(target, overwrite)
    with output_lock(out_dir), os_errors_name(out_dir):
        return _write_shards(samples, out_dir, target, names, shard_size, prefix, gzip, image_format, mode,
                             overwrite, total, progress, resize)


def _write_shards(samples: Iterable[SampleIn], out_dir: str | os.PathLike[str], target: Path,
                  names: list[str], shard_size: int, prefix: str, gzip: bool, image_format: str, mode: str,
                  overwrite: bool, total: int | None, progress: Progress | None,
                  resize: int | None) -> dict[str, Any]:
    stage = StagedFolder(target, overwrite, marker=SHARDS_INDEX, kind=PREPARED_KIND)
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

    with stage:
        tmp = stage.path
        try:
            for key, item, label in samples:
                check_key(key)
                if key in seen:
                    raise NrrError(None, f"duplicate key {key!r}")
                seen.add(key)
                if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(names):
                    raise NrrError(None, f"sample {key!r}: label {label!r} outside the {len(names)} classes")
                ext, data = (item.stored() if isinstance(item, Encoded)
                             else encode_sample(item, key, image_format, mode, resize))
                if writer is not None and writer.count >= shard_size:
                    close_current()
                if writer is None:
                    writer = TarShardWriter(tmp / f"{prefix}-{len(shards):06d}.tar")
                writer.add(key, {ext: data, "cls": str(int(label)).encode()})
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
            stage.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return {**index, "out_dir": os.fspath(out_dir), "bytes": sum(s["bytes"] for s in shards)}


def _write_remote(samples: Iterable[SampleIn], url: fs.Url, class_names: Sequence[str],
                  **kw: Any) -> dict[str, Any]:
    """Shards for an object store: written in the URL's staging folder, then uploaded (``shards.json`` last)."""
    check_class_names(class_names)
    check_key(kw["prefix"], "prefix")
    summary = remote.run_remote(
        url, {"job": "prepare", "classes": list(class_names), **{k: v for k, v in kw.items() if k != "progress"}},
        lambda local: write_shards(samples, local, class_names, **kw), marker=SHARDS_INDEX,
        kind=PREPARED_KIND, ours=_prepared_object, overwrite=kw["overwrite"])
    return {**summary, "out_dir": str(url)}


def select_indices(labels: np.ndarray, per_class: int | None = None, limit: int | None = None,
                   skip: int = 0, skip_per_class: int = 0, *, last_per_class: int | None = None,
                   drop_last_per_class: int = 0) -> np.ndarray:
    """Indices to keep, in file order: after the first ``skip`` images, images ``skip_per_class`` to
    ``skip_per_class + per_class - 1`` of each class (their rank within the class), then the first
    ``limit``. (``skip`` carves a split off a file: ``--limit 50000`` and ``--skip 50000`` are disjoint;
    ``skip_per_class`` carves per-class parts: ``--per-class 4000``, then ``--skip-per-class 4000
    --per-class 500``, then ``--skip-per-class 4500`` are disjoint and balanced.)

    Counted from each class's end, and applied before the rest: ``drop_last_per_class`` drops the last N
    images of each class, then ``last_per_class`` keeps the last N of what remains. Classes of unequal size
    (Imagenette: 858 to 993) get equal held-out parts this way: ``last_per_class=150`` (test),
    ``drop_last_per_class=150, last_per_class=100`` (validation), ``drop_last_per_class=250`` (train)."""
    if skip < 0 or skip_per_class < 0 or drop_last_per_class < 0:
        raise NrrError(None, f"skip counts must be at least 0, got {skip}, {skip_per_class} and {drop_last_per_class}")
    if drop_last_per_class or last_per_class is not None:
        tail = _tail_indices(labels, last_per_class, drop_last_per_class)
        return tail[select_indices(labels[tail], per_class, limit, skip, skip_per_class)]
    idx = np.arange(len(labels))
    if skip:
        rest = select_indices(labels[skip:], per_class, limit, skip_per_class=skip_per_class)
        if len(rest) == 0:
            raise NrrError(None, f"skipping {skip} images leaves none (the file has {len(labels)})")
        return rest + skip
    if per_class is not None or skip_per_class:
        if per_class is not None and per_class < 1:
            raise NrrError(None, f"per-class count must be at least 1, got {per_class}")
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        rank = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
        keep = rank >= skip_per_class
        if per_class is not None:
            keep &= rank < skip_per_class + per_class
        idx = np.sort(order[keep])
        if len(idx) == 0:
            raise NrrError(None, f"skipping the first {skip_per_class} images of each class leaves none "
                                 f"(the largest class has {int(rank.max()) + 1})")
    if limit is not None:
        if limit < 1:
            raise NrrError(None, f"limit must be at least 1, got {limit}")
        idx = idx[:limit]
    return idx


def _tail_indices(labels: np.ndarray, last: int | None, drop_last: int) -> np.ndarray:
    """File-order indices left after dropping each class's last ``drop_last`` and keeping its last ``last``."""
    if last is not None and last < 1:
        raise NrrError(None, f"last-per-class count must be at least 1, got {last}")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    from_end = np.searchsorted(sorted_labels, sorted_labels, side="right") - 1 - np.arange(len(labels))
    keep = from_end >= drop_last
    if last is not None:
        keep &= from_end < drop_last + last
    if not keep.any():
        raise NrrError(None, f"dropping the last {drop_last} images of each class leaves none "
                             f"(the largest class has {int(from_end.max()) + 1})")
    return np.sort(order[keep])


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
    prefix: str | None = None,
    gzip: bool = False,
    image_format: str = "png",
    mode: str = "keep",
    overwrite: bool = False,
    progress: Progress | None = None,
    skip: int = 0,
    resize: int | None = None,
    skip_per_class: int = 0,
    workers: int = 0,
    *,
    last_per_class: int | None = None,
    drop_last_per_class: int = 0,
) -> dict[str, Any]:
    """IDX images + labels (paths, or arrays already read) -> shards. Key = ``{prefix}_{source index:07d}``.

    Without ``class_names`` the classes are named ``"0"``..``"K-1"`` for the largest label K-1.
    ``prefix`` defaults to the one the images file's name suggests (`default_prefix`). ``workers``
    processes convert and encode the images (0: this process does); the bytes written are the same.
    """
    check_workers(workers)
    prefix = default_prefix(images) if prefix is None else prefix
    if image_format == "source":
        raise NrrError(None, "--format source keeps image files' bytes; IDX files hold raw pixels: use png, webp or jpg")
    if isinstance(fs.location(out_dir), Path):
        check_not_inside(out_dir, {"IMAGES": images, "LABELS": labels}, "--out")
    _check_target(out_dir, overwrite)
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
    idx = select_indices(labs, per_class, limit, skip, skip_per_class, last_per_class=last_per_class,
                         drop_last_per_class=drop_last_per_class)
    keys = [f"{prefix}_{i:07d}" for i in idx]
    with EncodePool(EncodeJob(image_format, mode, resize, MAX_PIXELS), workers) as pool:
        samples = zip(keys, pool.pixels(keys, imgs, idx), (int(labs[i]) for i in idx), strict=True)
        return write_shards(
            samples, out_dir, class_names, shard_size=shard_size, prefix=prefix, gzip=gzip,
            image_format=image_format, mode=mode, overwrite=overwrite, total=len(idx), progress=progress,
            resize=resize,
        )


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
    resize: int | None = None,
    skip_per_class: int = 0,
    workers: int = 0,
    *,
    last_per_class: int | None = None,
    drop_last_per_class: int = 0,
) -> dict[str, Any]:
    """``ROOT/<class>/<image>`` -> shards; class names are the folder names in sorted order.

    Key = ``{prefix}_{i:07d}`` with i the file's position in the sorted listing of the whole tree.
    All images must share one size (a teacher takes one input size) unless ``resize`` makes them
    ``resize x resize``; the first file of another size is refused, naming the first file too.
    ``workers`` processes read, decode and encode the files (0: this process does); the bytes written
    are the same, and so is the error a bad file gives.
    """
    check_workers(workers)
    root = Path(root)
    if isinstance(fs.location(out_dir), Path):
        check_not_inside(out_dir, {"ROOT": root}, "--out")
    _check_target(out_dir, overwrite)
    classes, entries = list_imagefolder(root)
    idx = select_indices(np.array([e.label for e in entries], dtype=np.int64), per_class, limit, skip,
                         skip_per_class, last_per_class=last_per_class, drop_last_per_class=drop_last_per_class)
    chosen = [entries[int(i)] for i in idx]
    keys = [f"{prefix}_{int(i):07d}" for i in idx]
    with EncodePool(EncodeJob(image_format, mode, resize, max_pixels), workers) as pool:
        results = pool.files(keys, [e.path for e in chosen])
        return write_shards(
            _folder_samples(keys, chosen, results, resize), out_dir, classes, shard_size=shard_size,
            prefix=prefix, gzip=gzip, image_format=image_format, mode=mode, overwrite=overwrite, total=len(idx),
            progress=progress, resize=resize,
        )


def _folder_samples(keys: list[str], entries: list[FolderEntry], results: Iterator[FileResult],
                    resize: int | None) -> Iterator[SampleIn]:
    """Samples of the files, in order; a file that failed to read or decode, or whose size differs from the
    first's (without ``resize``), fails here at its turn."""
    first: tuple[Path, tuple[int, int]] | None = None
    for key, entry, result in zip(keys, entries, results, strict=True):
        if isinstance(result, Failure):
            raise result.error()
        size, item = result
        if first is None:
            first = (entry.path, size)
        elif resize is None and size != first[1]:
            raise NrrError(entry.path, f"image is {size[0]}x{size[1]}, but {first[0]} is {first[1][0]}x{first[1][1]}: "
                                       "the images of one set must share a size; pass --resize N to make every "
                                       "image NxN (shorter side scaled to N, centre cut)")
        yield key, item, entry.label
