"""Reading a store: manifest, index, images by shard or by key, distance rows by epoch.

The reader trusts only what the manifest lists and checks the format version on open. Random access
uses the byte offsets in ``index.parquet`` (one seek and one read per image, or one range request on a
remote store), the way litdata keeps a key index beside its chunks. A store is a local folder or a URL
(s3://, gs://, http(s)://); every file access goes through :mod:`nrrstore.format.fs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.images import decode_image
from nrrstore.format.manifest import INDEX_NAME, Manifest, load_manifest
from nrrstore.format.tables import INDEX_SCHEMA
from nrrstore.format.tario import iter_tar_samples


@dataclass
class StoreImage:
    index: int
    key: str
    label: int
    pixels: np.ndarray  # uint8 HxW or HxWx3
    meta: dict[str, Any]


class Store:
    """A finished store: a local folder or a URL (``path`` is a `Path` or an `fs.Url`)."""

    def __init__(self, path: str | os.PathLike[str], check_digest: bool = True) -> None:
        self.path: fs.Location = fs.location(path)
        self.manifest: Manifest = load_manifest(self.path, check_digest)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "Store":
        return cls(path)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def num_images(self) -> int:
        return self.manifest.num_images

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
            "per_class": dict(zip(m.classes, m.per_class)),
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
        path = self.path / INDEX_NAME
        try:
            source = path if isinstance(path, Path) else pa.BufferReader(fs.read_bytes(path))  # one request
            table = pq.read_table(source)
        except (FileNotFoundError, fs.NotFound):
            raise NrrError(path, "missing index") from None
        except (pa.ArrowException, OSError) as exc:
            raise NrrError(path, f"unreadable index: {exc}") from None
        if not table.schema.equals(INDEX_SCHEMA):
            raise NrrError(path, "index columns do not match the format's schema")
        check_labels(table.column("label").to_numpy(), table.column("key"), self.manifest.num_classes, path)
        return table

    def _table_source(self, rel: str) -> Any:
        """What pyarrow opens for the Parquet file ``rel``: a path, or a remote file of range requests."""
        entry = self.manifest.file(rel)
        return fs.table_source(self.path / rel, entry.bytes if entry else None)

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
            img = next((m for e, m in members.items() if e in ("png", "jpg", "jpeg", "webp")), None)
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
        """The encoded image bytes of image ``index`` (one seek)."""
        row = self.index.slice(index, 1).to_pylist()[0]
        return self._read_span(row["shard"], row["offset"], row["size"])

    def _read_span(self, shard: str, offset: int, size: int) -> bytes:
        """One seek and read (one range request on a remote store)."""
        try:
            return fs.read_range(self.path / shard, offset, size)
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
        """The rows of one epoch, reading only that epoch's row group(s) of the part that holds it."""
        part = next((p for p in self.distance_files() if p["first_epoch"] <= epoch <= p["last_epoch"]), None)
        if part is None:
            raise NrrError(self.path, f"no distances stored for epoch {epoch} (store has {self.num_epochs} epochs)")
        path = self.path / part["path"]
        try:
            # remote: pre-buffering coalesces the row group's column chunks into one range request
            pf = pq.ParquetFile(self._table_source(part["path"]), pre_buffer=not isinstance(self.path, Path))
            groups = [g for g in range(pf.metadata.num_row_groups) if _row_group_epoch(pf, g) == epoch]
            if not groups:
                raise NrrError(path, f"epoch {epoch} missing from the distance table")
            return pf.read_row_groups(groups, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise NrrError(path, f"unreadable distance table: {exc}") from None


def _row_group_epoch(pf: pq.ParquetFile, group: int) -> int | None:
    """The epoch of a row group, from its column statistics (min == max by construction)."""
    col = pf.schema_arrow.get_field_index("epoch")
    stats = pf.metadata.row_group(group).column(col).statistics
    if stats is None or not stats.has_min_max or stats.min != stats.max:
        return None
    return int(stats.min)


def check_labels(labels: np.ndarray, keys: Any, num_classes: int, where: str | os.PathLike[str]) -> None:
    """Refuse a label outside ``0..num_classes-1``, naming the first offending key (``keys[i]``)."""
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        key = keys[i].as_py() if hasattr(keys[i], "as_py") else keys[i]
        raise NrrError(where, f"key {key!r}: label {int(labels[i])} outside the store's {num_classes} classes "
                              f"(0..{num_classes - 1})" + (f"; {bad.size} such rows" if bad.size > 1 else ""))


def _parse_label(data: bytes | None, where: str) -> int:
    if data is None:
        raise NrrError(where, "no .cls label")
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        shown = data if len(data) <= 20 else data[:20] + b"..."
        raise NrrError(where, f"label {shown!r} is not an integer") from None
