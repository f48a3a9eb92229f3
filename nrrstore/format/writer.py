"""Writing a store: images into shards, an index, extra files, and the manifest last, atomically.

Everything is written inside a hidden sibling folder (:class:`~nrrstore.format.outputs.StagedFolder`);
`finalize` hashes every file, writes the manifest, and renames the folder into place. A crash or kill
at any point therefore leaves either no store or a complete one (plus a hidden temporary folder that
the next run removes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from nrrstore.errors import NrrError, os_errors_name
from nrrstore.format import fs
from nrrstore.format.atomic import atomic_write_bytes, file_sha256
from nrrstore.format.images import ImageHeader, effective_quality, encode_image, probe_image
from nrrstore.format.index import IndexRow, write_index
from nrrstore.format.keys import check_key
from nrrstore.format.layout import CAMS_PATH, IMAGES_DIR, INDEX_NAME, LABELS_DIR, MANIFEST_NAME, shard_path
from nrrstore.format.manifest import FileEntry, ImageInfo, Manifest, creation_time
from nrrstore.format.outputs import StagedFolder, check_output_folder, local_output
from nrrstore.format.tario import TarShardWriter
from nrrstore.progress import Progress

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

STORE_KIND = "an nrrstore store"


def check_output_dir(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse to write a store over something that is not ours to replace (see `check_output_folder`)."""
    check_output_folder(path, overwrite, marker=MANIFEST_NAME, kind=STORE_KIND)


def staged_store(final: str | os.PathLike[str], overwrite: bool, **kwargs: Any) -> StagedFolder:
    """A store's :class:`~nrrstore.format.outputs.StagedFolder` (``kwargs``: ``prefix``, ``path``)."""
    return StagedFolder(final, overwrite, marker=MANIFEST_NAME, kind=STORE_KIND, **kwargs)


def store_object(rel: str) -> bool:
    """Whether a relative path is one a store writer makes (what an unfinished remote store may hold)."""
    return rel == INDEX_NAME or rel.startswith((f"{IMAGES_DIR}/", f"{LABELS_DIR}/", f"{CAMS_PATH}/"))


class StoreWriter:
    """Build a store in store order. Images must all share one size and channel count."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: list[str],
        *,
        image_format: str = "png",
        quality: int | None = None,
        shard_size: int = 1024,
        overwrite: bool = False,
        normalization: dict[str, list[float]] | None = None,
        teacher: dict[str, Any] | None = None,
        method: dict[str, Any] | None = None,
        augmentation: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not classes:
            raise NrrError(path, "a store needs at least one class")
        if shard_size < 1:
            raise NrrError(path, "shard size must be positive")
        self.path = local_output(path)
        self._stage = staged_store(self.path, overwrite)
        self.tmp = self._stage.path
        with os_errors_name(self.path):
            self._stage.create()
            (self.tmp / IMAGES_DIR).mkdir()
        self.classes = list(classes)
        self.image_format = image_format.lower().replace("jpeg", "jpg")
        self.quality = quality
        self.shard_size = shard_size
        self.meta: dict[str, Any] = {
            "normalization": normalization, "teacher": teacher or {}, "method": method or {},
            "augmentation": augmentation, "source": source or {}, "labels": {},
        }
        self._rows: list[IndexRow] = []
        self._keys: set[str] = set()
        self._shards: list[str] = []
        self._shard: TarShardWriter | None = None
        self._shape: tuple[int, ...] | None = None
        self._kinds: dict[str, str] = {}
        self._encoded = False  # whether any image was encoded here (else its quality is unknown)
        self._done = False

    # -- images ---------------------------------------------------------------------------------
    def add_image(self, key: str, pixels: np.ndarray, label: int, meta: dict[str, Any] | None = None) -> int:
        """Append one image (``HxW`` or ``HxWx3`` uint8); returns its index in store order."""
        self._check(key, label, tuple(pixels.shape if pixels.ndim == 3 and pixels.shape[2] != 1 else pixels.shape[:2]))
        self._encoded = True
        return self._append(key, encode_image(pixels, self.image_format, self.quality), label, meta)

    def add_encoded(self, key: str, data: bytes, label: int, meta: dict[str, Any] | None = None,
                    where: str | None = None, header: ImageHeader | None = None) -> int:
        """Append one already encoded image, byte for byte (pass-through: no decoding, no re-encoding).

        The bytes must be the store's format (``image_format``) with 8-bit grey or RGB pixels of the
        store's size (see :func:`~nrrstore.format.images.probe_image`); ``where`` names their source;
        ``header``: what `probe_image` said of these very bytes, if the caller asked already.
        """
        head = header if header is not None else probe_image(data, where)
        if head is None or head.ext != self.image_format:
            raise NrrError(where or self.path, f"key {key!r}: not a {self.image_format} image with 8-bit grey or RGB "
                                               "pixels, so it cannot be stored as it is")
        self._check(key, label, (head.height, head.width) if head.mode == "L" else (head.height, head.width, 3))
        return self._append(key, data, label, meta)

    def _check(self, key: str, label: int, shape: tuple[int, ...]) -> None:
        check_key(key, str(self.path))
        if key in self._keys:
            raise NrrError(self.path, f"duplicate key {key!r}")
        if not 0 <= int(label) < len(self.classes):
            raise NrrError(self.path, f"key {key!r}: label {label} outside the {len(self.classes)} classes")
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise NrrError(self.path, f"key {key!r}: image shape {shape} differs from the store's {self._shape}")

    def _append(self, key: str, data: bytes, label: int, meta: dict[str, Any] | None) -> int:
        meta_bytes = json.dumps(meta or {}, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        with os_errors_name(self.path):
            shard = self._current_shard()
            spans = shard.add(key, {self.image_format: data, "cls": str(int(label)).encode(), "json": meta_bytes})
            self._rows.append(IndexRow(key, int(label), self._shards[-1], self.image_format,
                                   spans[self.image_format].offset, spans[self.image_format].size,
                                   spans["json"].offset, spans["json"].size))
            self._keys.add(key)
            if shard.count >= self.shard_size:
                self._shard = None
                shard.close()
        return len(self._rows) - 1

    def _current_shard(self) -> TarShardWriter:
        if self._shard is None:
            rel = shard_path(len(self._shards))
            self._shards.append(rel)
            self._kinds[rel] = "images"
            self._shard = TarShardWriter(self.tmp / rel)
        return self._shard

    @property
    def num_images(self) -> int:
        return len(self._rows)

    @property
    def channels(self) -> int | None:
        """1 or 3 once an image is written (None before)."""
        return None if self._shape is None else (3 if len(self._shape) == 3 else 1)

    # -- other components -----------------------------------------------------------------------
    def file_path(self, rel: str, kind: str) -> Path:
        """Where to write an extra file (Parquet table, zarr array...) that `finalize` will record."""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise NrrError(rel, "store file paths must stay inside the store")
        self._kinds[rel] = kind
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def set_meta(self, section: str, value: Any) -> None:
        """Fill a manifest section: teacher, method, augmentation, labels, source, normalization."""
        if section not in self.meta:
            raise KeyError(section)
        self.meta[section] = value

    # -- finishing ------------------------------------------------------------------------------
    def finalize(self, progress: Progress | None = None) -> Manifest:
        """Write the index, hash every file, write the manifest last and move the store into place."""
        with os_errors_name(self.path):
            return self._finalize(progress)

    def _finalize(self, progress: Progress | None) -> Manifest:
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        if not self._rows:
            raise NrrError(self.path, "no images were written")
        write_index(self.tmp / INDEX_NAME, self._rows)
        self._kinds[INDEX_NAME] = "index"
        files = collect_files(self.tmp, self._kinds, progress)
        assert self._shape is not None
        h, w = self._shape[:2]
        per_class = np.bincount([r.label for r in self._rows], minlength=len(self.classes)).tolist()
        manifest = Manifest(
            classes=self.classes,
            image=ImageInfo(h, w, 3 if len(self._shape) == 3 else 1, self.image_format,
                            effective_quality(self.image_format, self.quality) if self._encoded else None),
            num_images=len(self._rows), per_class=per_class, shards=list(self._shards),
            shard_size=self.shard_size, files=files, created=creation_time(), **self.meta,
        )
        atomic_write_bytes(self.tmp / MANIFEST_NAME, manifest.to_json().encode())
        self._stage.commit()
        self._done = True
        return manifest

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.abort()
            self._shard = None
        self._stage.discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def collect_files(root: Path, kinds: dict[str, str], progress: Progress | None = None) -> list[FileEntry]:
    """Size and sha256 of every file under ``root`` except the manifest, sorted by path.

    Files inside a registered folder (a zarr array) take that folder's kind.
    """
    paths = [rel for rel in fs.list_files(root) if rel.split("/")[-1] != MANIFEST_NAME]
    out: list[FileEntry] = []
    for i, rel in enumerate(paths):
        kind = kinds.get(rel) or next((k for d, k in kinds.items() if rel.startswith(d.rstrip("/") + "/")), "meta")
        out.append(FileEntry(rel, fs.file_size(root / rel), file_sha256(root / rel), kind))
        if progress:
            progress("hashing", i + 1, len(paths))
    return out


