"""The images SRe2L's labels were made on, in the order its dataset listed them, and their store.

An ImageFolder tree (what SRe2L reads) or WebDataset shards. The store keeps the source files'
bytes when every image can be stored as it is (:mod:`nrrstore.convert.passthrough`), else all are
re-encoded as PNG; the store's ``source`` says which, and why.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nrrstore.convert.passthrough import AsIs, NotAsIs, read_file
from nrrstore.convert.sre2l.folder import LabelFolder
from nrrstore.errors import NrrError, path_text
from nrrstore.format.writer import StoreWriter
from nrrstore.progress import Progress
from nrrstore.sources.encode import convert_mode
from nrrstore.sources.imagefolder import list_imagefolder, read_image_file
from nrrstore.sources.shards import is_remote, iter_samples, read_class_names, resolve_shards

IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_key(name: str) -> str:
    """A store key from a file stem or a sample key: runs of other characters become '-'."""
    return _KEY_BAD.sub("-", name).strip("-")[:200]


@dataclass
class ImageSource:
    """The images the labels were made on, in the order SRe2L's dataset listed them."""

    kind: str  # imagefolder | shards
    spec: str
    classes: list[str] | None
    count: int | None  # known up front for ImageFolder trees
    bytes: int
    files: int
    digest: str
    entries: list[Any] | None = None  # ImageFolder entries
    shards: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": path_text(self.spec), "bytes": self.bytes, "files": self.files}

    def samples(self, mode: str, encoded: bool = False) -> Iterator[tuple[str, Any, int, dict[str, Any], str]]:
        """``(key, image, label, meta, where)`` in store order; keys unique and valid.

        ``image`` is the decoded pixels in ``mode``, or with ``encoded`` the source bytes unchanged.
        """
        seen: set[str] = set()
        if self.kind == "imagefolder":
            assert self.entries is not None
            root = Path(self.spec)
            stems = [sanitize_key(e.path.stem) or "img" for e in self.entries]
            counts: dict[str, int] = {}
            for s in stems:
                counts[s] = counts.get(s, 0) + 1
            for i, (e, s) in enumerate(zip(self.entries, stems, strict=True)):
                key = s if counts[s] == 1 else f"{s[:190]}-{i:07d}"
                image = read_file(e.path) if encoded else convert_mode(read_image_file(e.path), mode)
                yield key, image, e.label, {"source": path_text(e.path.relative_to(root))}, path_text(e.path)
            return
        for i, smp in enumerate(iter_samples(self.shards or self.spec, decode=not encoded)):
            key = sanitize_key(smp.key) or f"img{i:07d}"
            if key in seen:
                key = f"{key[:190]}-{i:07d}"
            seen.add(key)
            if encoded:
                assert smp.data is not None  # iter_samples keeps every image member's bytes
                image = smp.data
            else:
                image = convert_mode(smp.image, mode)
            meta = {"source_key": path_text(smp.key), "shard": path_text(os.path.basename(smp.shard))}
            yield key, image, smp.label, meta, f"{path_text(smp.shard)}: {path_text(smp.key)}"


def open_image_source(spec: str | os.PathLike[str], classes: Sequence[str] | None = None) -> ImageSource:
    """An ImageFolder tree (a folder with class subfolders) or WebDataset shards (anything else)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        names, entries = list_imagefolder(path)
        sizes = [e.path.stat().st_size for e in entries]
        digest = hashlib.sha256("\n".join(f"{e.path.relative_to(path).as_posix()}:{s}"
                                          for e, s in zip(entries, sizes, strict=True)).encode()).hexdigest()
        if classes is not None and len(classes) != len(names):
            raise NrrError(path, f"{len(names)} class folders, but {len(classes)} class names were given")
        return ImageSource("imagefolder", text, list(classes) if classes is not None else names, len(entries),
                           sum(sizes), len(entries), digest, entries=entries)
    shards = resolve_shards(text)
    local = [s for s in shards if not is_remote(s)]
    sizes = [os.path.getsize(s) for s in local]
    digest = hashlib.sha256("\n".join(f"{s}:{n}" for s, n in zip(local, sizes, strict=True)).encode()).hexdigest()
    shard_classes = list(classes) if classes is not None else read_class_names(shards)
    return ImageSource("shards", text, shard_classes, None, sum(sizes), len(shards), digest, shards=shards)


def _check_normalization(norm: Any, channels: int) -> dict[str, list[float]] | None:
    if norm == "auto":
        return IMAGENET_NORMALIZATION if channels == 3 else None
    if norm is None:
        return None
    try:
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    except (KeyError, TypeError, ValueError):
        raise NrrError(None, "normalization must be {'mean': [...], 'std': [...]}") from None
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise NrrError(None, f"normalization needs {channels} mean and {channels} positive std value(s), "
                             f"got mean {mean}, std {std}")
    return {"mean": mean, "std": std}


def write_images(src: ImageSource, store_dir: Path, folder: LabelFolder, batch: int, num_classes: int,
                 args: dict[str, Any], progress: Progress | None) -> None:
    """The images store: the source bytes as they are when every image can be (one pass), else PNG."""
    try:
        _images_store(src, store_dir, folder, batch, num_classes, args, progress, AsIs(args["mode"]))
    except NotAsIs as exc:
        _images_store(src, store_dir, folder, batch, num_classes, args, progress, None, exc.why)


def _images_store(src: ImageSource, store_dir: Path, folder: LabelFolder, batch: int, num_classes: int,
                  args: dict[str, Any], progress: Progress | None, as_is: AsIs | None, why: str = "") -> None:
    classes = src.classes or [str(i) for i in range(num_classes)]
    source: dict[str, Any] = {
        "format": "sre2l", "path": path_text(folder.root.resolve()), "bytes": folder.bytes, "files": folder.files,
        "epochs": folder.epochs, "batch_size": batch, "num_classes": num_classes,
        "images": src.describe(), "total_bytes": folder.bytes + src.bytes,
    }
    w: StoreWriter | None = None
    try:
        for i, (key, image, label, meta, where) in enumerate(src.samples(args["mode"], encoded=as_is is not None)):
            if not 0 <= label < len(classes):
                raise NrrError(src.spec, f"image {meta}: label {label} outside the {len(classes)} classes")
            head = as_is.check(image, where) if as_is is not None else None
            if w is None:  # the first image decides the store's format
                w = StoreWriter(store_dir, classes, image_format=head.ext if head else "png",
                                shard_size=args["shard_size"], overwrite=True)
            if head is not None:
                w.add_encoded(key, image, label, meta, where, header=head)
            else:
                w.add_image(key, image, label, meta)
            if progress:
                progress("write images", i + 1, src.count)
        if w is None:
            raise NrrError(src.spec, "no images")
        source["images"]["stored"] = f"as is ({w.image_format})" if as_is is not None else f"re-encoded as png: {why}"
        w.set_meta("source", source)
        w.set_meta("normalization", _check_normalization(args["normalization"], w.channels or 1))
        w.finalize()
    finally:
        if w is not None:
            w.__exit__(None, None, None)
