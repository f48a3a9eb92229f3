"""Reading a store: manifest, index, images by shard or by key, distance rows by epoch.

The reader trusts only what the manifest lists and checks the format version on open. Random access
uses the byte offsets in ``index.parquet`` (one seek and one read per image, or one range request on a
remote store), the way litdata keeps a key index beside its chunks. A store is a local folder or a URL
(s3://, gs://, http(s)://); every file access goes through :mod:`nrrstore.format.fs`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.atomic import stream_sha256
from nrrstore.format.distances import epoch_part, read_epoch_table
from nrrstore.format.images import IMAGE_EXTS, decode_image
from nrrstore.format.index import read_index
from nrrstore.format.layout import INDEX_NAME, MANIFEST_NAME
from nrrstore.format.manifest import FileEntry, Manifest, load_manifest, manifest_digest
from nrrstore.format.shard_cache import ShardCache
from nrrstore.format.tario import iter_tar_samples


@dataclass
class StoreImage:
    index: int
    key: str
    label: int
    pixels: np.ndarray  # uint8 HxW or HxWx3
    meta: dict[str, Any]


_CHANGED = ("changed since this store's manifest was read (its size or checksum no longer match: relabelled or "
            "edited meanwhile?); open the store again to read the new version")


_CHECKED: set[tuple[str, str, int, int]] = set()
"""File versions (path, sha256, size, mtime) whose bytes this process has hashed and found as listed."""


class Store:
    """A finished store: a local folder or a URL (``path`` is a `Path` or an `fs.Url`).

    ``cache``: a :class:`~nrrstore.format.shard_cache.ShardCache` through which image reads of a remote
    store go (the shards are fetched once, then read locally); a local store is read in place, never cached.
    """

    def __init__(self, path: str | os.PathLike[str], check_digest: bool = True,
                 cache: ShardCache | None = None) -> None:
        self.path: fs.Location = fs.location(path)
        self.manifest: Manifest = load_manifest(self.path, check_digest)
        self._pins: dict[str, tuple[int, int, int, int]] = {}  # files checked against the manifest (_pinned_table)
        self.cache = cache if isinstance(self.path, fs.Url) else None

    def with_cache(self, cache: ShardCache | None) -> Store:
        """This store (a shallow copy: the same manifest and index) reading its shards through ``cache``."""
        other = copy.copy(self)
        other.cache = cache if isinstance(self.path, fs.Url) else None
        return other

    def check_checksums(self, progress: Any = None, under: tuple[str, ...] = ()) -> int:
        """Compare every listed file of a local store with the sha256 its manifest records, before a training job
        reads it: a file edited in place after the store was written (same size, old checksum in the manifest)
        is refused in one line instead of being trained on. Each file version (path, size, mtime) is hashed once
        per process, so the students of one evaluation pay once; returns the bytes hashed now. ``under``: only the
        files whose paths start with one of these (relabel checks the images it reads, not the labels it replaces).
        Remote stores are read through their own transfer checks and are not hashed here (that would download
        every file twice)."""
        if not isinstance(self.path, Path):
            return 0
        hashed = 0
        files = [f for f in self.manifest.files if not under or f.path.startswith(under)]
        for i, f in enumerate(files):
            p = self.path / f.path
            try:
                st = p.stat()
            except OSError:
                raise NrrError(p, "missing, though the manifest lists it (run `nrrstore verify`)") from None
            key = (str(p), f.sha256, st.st_size, st.st_mtime_ns)
            if key not in _CHECKED:
                if st.st_size != f.bytes or fs.sha256(p) != f.sha256:
                    raise NrrError(p, "differs from the sha256 the manifest records: the file changed after the "
                                      "store was written (run `nrrstore verify`); nothing was trained on it")
                _CHECKED.add(key)
                hashed += f.bytes
            if progress is not None:
                progress("check store files (sha256)", i + 1, len(files))
        return hashed

    def checked(self, under: tuple[str, ...] = ()) -> Store:
        """This store, after `check_checksums` (a job that reads it refuses files edited in place first)."""
        self.check_checksums(under=under)
        return self

    # -- facts ------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def num_images(self) -> int:
        return self.manifest.num_images

    @property
    def manifest_path(self) -> fs.Location:
        """Where the manifest lives (what messages about its values name)."""
        return self.path / MANIFEST_NAME

    @property
    def index_path(self) -> fs.Location:
        return self.path / INDEX_NAME

    @cached_property
    def digest(self) -> str:
        """sha256 of the manifest's values (its ``manifest_sha256`` when written by this format version): what
        names this version of the store, e.g. as the shard cache's key."""
        return manifest_digest(self.manifest.to_dict())

    def info(self) -> dict[str, Any]:
        """Counts, sizes per component and the recorded parameters, as plain data."""
        m = self.manifest
        by_kind: dict[str, dict[str, int]] = {}
        for f in m.files:
            k = by_kind.setdefault(f.kind, {"files": 0, "bytes": 0})
            k["files"] += 1
            k["bytes"] += f.bytes
        return {
            "path": str(self.path), "kind": "store", "format_version": m.format_version,
            "tool_version": m.tool_version, "created": m.created,
            "num_images": m.num_images, "num_classes": m.num_classes,
            "per_class": dict(zip(m.classes, m.per_class, strict=True)),
            "image": {"height": m.image.height, "width": m.image.width, "channels": m.image.channels,
                      "mode": m.image.mode, "encoding": m.image.encoding},
            "shards": len(m.shards), "components": by_kind,
            "total_bytes": sum(f.bytes for f in m.files),
            "normalization": m.normalization, "teacher": m.teacher, "method": m.method,
            "augmentation": m.augmentation, "labels": m.labels, "source": m.source,
        }

    # -- index & images -------------------------------------------------------------------------
    @cached_property
    def index(self) -> pa.Table:
        """The key index (see :mod:`nrrstore.format.index`), checked; one request on a remote store."""
        path = self.index_path
        try:
            source = path if isinstance(path, Path) else pa.BufferReader(fs.read_bytes(path))
        except fs.NotFound:
            raise NrrError(path, "missing index") from None
        return read_index(source, path, self.manifest.num_classes)

    def _table_source(self, rel: str) -> Any:
        """What pyarrow opens for the Parquet file ``rel``: a path, or a remote file of range requests."""
        entry = self.manifest.file(rel)
        return fs.table_source(self.path / rel, entry.bytes if entry else None)

    @cached_property
    def _listed(self) -> dict[str, FileEntry]:
        """The manifest's file entries by path."""
        return {f.path: f for f in self.manifest.files}

    @cached_property
    def _key_to_row(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.index.column("key").to_pylist())}

    def labels(self) -> np.ndarray:
        """Class label of every image, in store order."""
        return self.index.column("label").to_numpy().astype(np.int64)

    def iter_shard(self, shard: str) -> Iterator[StoreImage]:
        """Decode one shard's images in order (a plain sequential read)."""
        path = self.path / shard
        first = self._first_index_of_shard.get(shard, 0)
        for n, (key, members) in enumerate(iter_tar_samples(path)):
            img = next((m for e, m in members.items() if e in IMAGE_EXTS), None)
            where = f"{path}:{key}"
            if img is None:
                raise NrrError(path, f"sample {key!r} has no image member")
            label = _parse_label(members.get("cls"), where)
            if not 0 <= label < self.manifest.num_classes:
                raise NrrError(path, f"key {key!r}: label {label} outside the store's {self.manifest.num_classes} "
                                     f"classes (0..{self.manifest.num_classes - 1})")
            meta = json.loads(members["json"]) if "json" in members else {}
            yield StoreImage(first + n, key, label, decode_image(img, where), meta)

    @cached_property
    def _first_index_of_shard(self) -> dict[str, int]:
        shards = self.index.column("shard").to_pylist()
        first: dict[str, int] = {}
        for i, s in enumerate(shards):
            first.setdefault(s, i)
        return first

    def iter_images(self) -> Iterator[StoreImage]:
        for shard in self.manifest.shards:
            yield from self.iter_shard(shard)

    def read_bytes(self, index: int) -> bytes:
        """The encoded image bytes of image ``index`` as stored (one seek), e.g. to copy them undecoded."""
        row = self.index.slice(index, 1).to_pylist()[0]
        return self._read_span(row["shard"], row["offset"], row["size"])

    def _read_span(self, shard: str, offset: int, size: int) -> bytes:
        """One seek and read (one range request on a remote store, or a read of its cached copy)."""
        loc = self.path / shard
        entry = self._listed.get(shard) if self.cache is not None else None
        try:
            if self.cache is not None and entry is not None and isinstance(loc, fs.Url):
                return self.cache.read_range(loc, self.digest, entry, offset, size)
            return fs.read_range(loc, offset, size)
        except NrrError as exc:
            if exc.problem.startswith("truncated"):
                raise NrrError(self.path / shard, f"truncated shard: wanted {size} bytes at {offset}") from None
            raise

    def get(self, key_or_index: str | int) -> StoreImage:
        """Random access to one image by key or store index."""
        if isinstance(key_or_index, str):
            if key_or_index not in self._key_to_row:
                raise NrrError(self.path, f"no image with key {key_or_index!r}")
            i = self._key_to_row[key_or_index]
        else:
            i = int(key_or_index)
            if not 0 <= i < self.num_images:
                raise NrrError(self.path, f"image index {i} outside 0..{self.num_images - 1}")
        row = self.index.slice(i, 1).to_pylist()[0]
        where = f"{self.path / row['shard']}:{row['key']}"
        pixels = decode_image(self._read_span(row["shard"], row["offset"], row["size"]), where)
        meta = json.loads(self._read_span(row["shard"], row["meta_offset"], row["meta_size"]))
        return StoreImage(i, row["key"], row["label"], pixels, meta)

    # -- distances ------------------------------------------------------------------------------
    def distance_files(self) -> list[dict[str, Any]]:
        """The manifest's distance parts: ``[{"path", "first_epoch", "last_epoch"}]``."""
        d = self.manifest.labels.get("distances") or {}
        return list(d.get("files", []))

    @property
    def num_epochs(self) -> int:
        d = self.manifest.labels.get("distances") or {}
        return int(d.get("epochs", 0))

    def read_distances(self, epoch: int, columns: list[str] | None = None) -> pa.Table:
        """The rows of one epoch, reading only that epoch's row group(s) of the part that holds it.

        As stored (int8 codes stay codes); :func:`nrrstore.format.distances.read_epoch_labels` decodes them.
        """
        part = epoch_part(self, epoch)
        if part is None:
            raise NrrError(self.path, f"no distances stored for epoch {epoch} (store has {self.num_epochs} epochs)")
        with self._pinned_table(part["path"]) as source:
            return read_epoch_table(source, self.path / part["path"], epoch, columns)

    @contextmanager
    def _pinned_table(self, rel: str) -> Iterator[Any]:
        """The Parquet file ``rel`` as this store's manifest describes it, or one line saying it changed.

        A reader pins the manifest it opened: the first time a local file is read its size and sha256 must
        match the manifest (once per `Store`), and later reads must find the same file (device, inode, size,
        mtime), checked on the open handle that pyarrow then reads. So a reader running beside
        ``relabel --overwrite`` finishes on the files it already holds or fails in one line, and never mixes
        two versions' labels. Remote files are checked by size (their ranges are read by size).
        """
        loc = self.path / rel
        entry = self.manifest.file(rel)
        if not isinstance(loc, Path) or entry is None:
            yield self._table_source(rel)
            return
        try:
            f = open(loc, "rb")  # noqa: SIM115 - closed below, after pyarrow has read from it
        except FileNotFoundError:
            raise NrrError(loc, _CHANGED) from None
        with f:
            st = os.fstat(f.fileno())
            pin = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            known = self._pins.get(rel)
            if known is None:
                if st.st_size != entry.bytes or stream_sha256(f) != entry.sha256:
                    raise NrrError(loc, _CHANGED)
                self._pins[rel] = pin
                f.seek(0)
            elif known != pin:
                raise NrrError(loc, _CHANGED)
            yield f


def _parse_label(data: bytes | None, where: str) -> int:
    if data is None:
        raise NrrError(where, "no .cls label")
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        shown = data if len(data) <= 20 else data[:20] + b"..."
        raise NrrError(where, f"label {shown!r} is not an integer") from None
