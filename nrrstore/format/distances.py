"""DBR distance tables: ``labels/distances-eAAAA-eBBBB.parquet``, one row group per epoch.

One module for everything that touches their bytes: the precisions (fp16, fp32, int8 codes), the
explicit-mode view columns, the row group per epoch that lets a reader read one epoch alone, the
manifest section that lists the files, the reader that decodes one epoch back to float32, and the
byte accounting the size report needs. `relabel`, `convert-softlabels`, `export`, the loader and
`verify` all go through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format import fs, quant
from nrrstore.format.atomic import CommitOrAbort
from nrrstore.format.layout import distance_file_name, distance_path
from nrrstore.format.parquet import RowGroupFile
from nrrstore.format.tables import DISTANCE_TYPES, EXPLICIT_COLUMNS, distance_schema

if TYPE_CHECKING:
    from nrrstore.format.reader import Store

MODES = ("seeded", "explicit")
DEFAULT_EPOCHS_PER_FILE = 100
#: Columns whose bytes do not grow with the number of images in an epoch (delta-encoded to almost nothing).
FIXED_COLUMNS = ("epoch", "image")
#: What zstd adds to every compressed page whatever its size (frame and block headers).
ZSTD_PAGE_BYTES = 9
_ITEM_BYTES = {"BOOLEAN": 1 / 8, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def check_precision(precision: str) -> str:
    if precision not in DISTANCE_TYPES:
        raise NrrError(None, f"unknown precision {precision!r}; use one of {', '.join(DISTANCE_TYPES)}")
    return precision


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise NrrError(None, f"unknown distance mode {mode!r}; use seeded or explicit")
    return mode


def epoch_chunks(epochs: int, per_file: int) -> list[tuple[int, int]]:
    """``(first, last)`` epochs of each file when ``epochs`` epochs are split ``per_file`` to a file."""
    return [(a, min(a + per_file, epochs) - 1) for a in range(0, epochs, per_file)]


def parquet_options(precision: str) -> dict[str, Any]:
    """Column encodings that make a view cost little more than its two values (measured: P3).

    ``epoch`` (constant per row group) and ``image`` (0..N-1) are delta-encoded to almost nothing;
    statistics are written for ``epoch`` only (readers find an epoch's row group by them); int8
    codes and fp32 values are byte-stream-split so zstd sees their high bytes together (fp16 gains
    nothing from it on real distances).
    """
    enc: dict[str, str] = {"epoch": "DELTA_BINARY_PACKED", "image": "DELTA_BINARY_PACKED"}
    if precision != "fp16":
        enc.update(d_org="BYTE_STREAM_SPLIT", d_aug="BYTE_STREAM_SPLIT")
    return {"write_statistics": ["epoch"], "use_dictionary": False, "column_encoding": enc}


DISK_BLOCK = 4096
"""A file occupies whole blocks of the disk (what `du` counts): the disk check rounds each file up to one."""


def distance_files_bytes(num_images: int, epochs: int, per_file: int, precision: str, explicit: bool = False) -> int:
    """Disk bytes of the distance files of ``epochs`` epochs of ``num_images`` images, measured, not assumed: a
    probe of one and of two epochs of plausible values (teacher cross-entropies around 1 nat) is written with the
    real schema and encodings to memory; its per-epoch growth and fixed part (footer, metadata) extrapolate each
    file, rounded up to whole disk blocks. Small stores pay mostly for the fixed part (22 B per view at 20 images)."""
    schema = distance_schema(precision, explicit)
    rng = np.random.default_rng(0)
    n = int(num_images)

    def column(field: pa.Field, epoch: int) -> np.ndarray:
        kind = field.type.to_pandas_dtype()
        if field.name == "epoch":
            return np.full(n, epoch, np.int32)
        if field.name == "image":
            return np.arange(n, dtype=np.int32)
        if np.issubdtype(kind, np.floating):
            return rng.exponential(1.0, n).astype(kind)
        if kind is np.bool_ or np.dtype(kind) == np.bool_:
            return rng.integers(0, 2, n).astype(bool)
        info = np.iinfo(kind)
        return rng.integers(max(info.min, 0), min(info.max, 255), n, endpoint=True).astype(kind)

    def size(groups: int) -> int:
        sink = pa.BufferOutputStream()
        with pq.ParquetWriter(sink, schema, compression="zstd", store_schema=False,
                              **parquet_options(precision)) as w:
            for e in range(groups):
                w.write_table(pa.table({f.name: column(f, e) for f in schema}, schema=schema), row_group_size=n)
        return len(sink.getvalue())

    one, two = size(1), size(2)
    per_epoch, fixed = two - one, max(0, 2 * one - two)

    def on_disk(file_epochs: int) -> int:
        return -(-(fixed + per_epoch * file_epochs) // DISK_BLOCK) * DISK_BLOCK

    full, rest = divmod(int(epochs), int(per_file))  # closed form: --epochs may be mistyped as 10^9
    return full * on_disk(per_file) + (on_disk(rest) if rest else 0)


# -- writing ------------------------------------------------------------------------------------------
class DistanceFile(CommitOrAbort):
    """One distance table being written, one epoch (one row group) at a time, atomically.

    ``quant_max`` is the int8 scale (see :mod:`nrrstore.format.quant`); None for int8 chooses it from
    the first epoch written (then read it back from :attr:`quant_max`). :attr:`clipped` counts the
    values above the scale that int8 clipped.
    """

    def __init__(self, path: str | os.PathLike[str], num_images: int, precision: str = "fp16", *,
                 explicit: bool = False, quant_max: float | None = None) -> None:
        self.precision = check_precision(precision)
        self.num_images = int(num_images)
        self.explicit = explicit
        self.quant_max = None if quant_max is None else quant.check_max(quant_max)
        self.clipped = 0
        fs.make_dirs(Path(path).parent)
        self._file = RowGroupFile(path, distance_schema(precision, explicit), **parquet_options(precision))

    def write_epoch(self, epoch: int, d_org: np.ndarray, d_aug: np.ndarray,
                    views: Mapping[str, np.ndarray] | None = None) -> None:
        """Append epoch ``epoch``: row i is image i; ``views`` are the explicit-mode columns."""
        n = self.num_images
        if len(d_org) != n or len(d_aug) != n:
            raise NrrError(self._file.path, f"epoch {epoch}: {len(d_org)} distances for {n} images")
        if self.explicit != (views is not None):
            raise NrrError(self._file.path, "explicit-mode tables need the view columns, seeded ones take none")
        columns: dict[str, Any] = {"epoch": np.full(n, epoch, np.int32), "image": np.arange(n, dtype=np.int32)}
        columns["d_org"], columns["d_aug"] = self._encode(np.asarray(d_org), np.asarray(d_aug))
        self._file.write({**columns, **(views or {})})

    def _encode(self, d_org: np.ndarray, d_aug: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.precision != "int8":
            dtype = np.float16 if self.precision == "fp16" else np.float32
            out = d_org.astype(dtype), d_aug.astype(dtype)
            if not (np.isfinite(out[0]).all() and np.isfinite(out[1]).all()):  # after the cast: fp16 ends at 65504
                top = float(max(np.max(d_org), np.max(d_aug)))
                raise NrrError(self._file.path, f"a cross-entropy of {top:.4g} does not fit {self.precision} "
                                                f"(largest {float(np.finfo(dtype).max):.6g}); nothing was written: "
                                                "use --precision fp32, or check the teacher")
            return out
        if self.quant_max is None:
            self.quant_max = quant.choose_max(np.concatenate([d_org, d_aug]))
        qmax = self.quant_max
        self.clipped += int((d_org > qmax).sum() + (d_aug > qmax).sum())
        return quant.encode(d_org, qmax), quant.encode(d_aug, qmax)

    def close(self) -> None:
        self._file.close()

    def abort(self) -> None:
        self._file.abort()


def distances_section(chunks: Sequence[tuple[int, int]], precision: str, mode: str,
                      quant_max: float | None = None) -> dict[str, Any]:
    """The manifest's ``labels.distances``: the files of ``chunks`` and how to read their values."""
    section: dict[str, Any] = {
        "files": [{"path": distance_path(a, b), "first_epoch": a, "last_epoch": b} for a, b in chunks],
        "epochs": chunks[-1][1] + 1, "precision": precision, "mode": mode,
    }
    if precision == "int8":
        section["quant"] = {"max": quant_max}
    return section


def install_chunks(root: str | os.PathLike[str], work: str | os.PathLike[str],
                   chunks: Sequence[tuple[int, int]]) -> dict[str, str]:
    """Move the finished files of ``chunks`` from ``work`` into the store's labels folder.

    Idempotent (a file already moved is fine), so an interrupted install can be rerun. Returns the
    store paths and their kind, as :func:`~nrrstore.format.update.update_store` takes them.
    """
    files: dict[str, str] = {}
    for a, b in chunks:
        src, rel = Path(work) / distance_file_name(a, b), distance_path(a, b)
        dst = Path(root) / rel
        if fs.is_file(src):
            fs.make_dirs(dst.parent)
            fs.move(src, dst)
        elif not fs.is_file(dst):
            raise NrrError(work, f"{src.name} should be finished, but it is missing; delete this folder to start over")
        files[rel] = "distances"
    return files


# -- reading ------------------------------------------------------------------------------------------
def epoch_part(store: Store, epoch: int) -> dict[str, Any] | None:
    """The manifest entry of the file holding ``epoch`` (None: not stored)."""
    return next((p for p in store.distance_files() if p["first_epoch"] <= epoch <= p["last_epoch"]), None)


def read_epoch_table(source: Any, where: str | os.PathLike[str], epoch: int,
                     columns: list[str] | None = None) -> pa.Table:
    """The rows of ``epoch`` from one distance file, reading only that epoch's row group(s)."""
    try:
        # remote (a range-request file): pre-buffering coalesces the row group's column chunks into one request
        pf = pq.ParquetFile(source, pre_buffer=isinstance(source, fs.RangeFile))
        groups = [g for g in range(pf.metadata.num_row_groups) if _row_group_epoch(pf, g) == epoch]
        if not groups:
            raise NrrError(where, f"epoch {epoch} missing from the distance table")
        return pf.read_row_groups(groups, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        unless_out_of_memory(exc)
        raise NrrError(where, f"unreadable distance table: {exc}") from None


def _row_group_epoch(pf: pq.ParquetFile, group: int) -> int | None:
    """The epoch of a row group, from its column statistics (min == max by construction)."""
    col = pf.schema_arrow.get_field_index("epoch")
    stats = pf.metadata.row_group(group).column(col).statistics
    if stats is None or not stats.has_min_max or stats.min != stats.max:
        return None
    return int(stats.min)


@dataclass
class EpochLabels:
    """One stored epoch, row i = image i: distances as float32 and, in explicit mode, the view columns."""

    d_org: np.ndarray | None
    d_aug: np.ndarray | None
    views: dict[str, np.ndarray] | None  # EXPLICIT_COLUMNS as stored (None: a seeded store)
    where: str


def read_epoch_labels(store: Store, epoch: int, need_distances: bool = True) -> EpochLabels:
    """One epoch of the store's distances, checked against the store, values decoded to float32.

    Only that epoch's row groups are read. ``need_distances=False`` reads just what replay needs
    (the view columns of an explicit store).
    """
    section = store.manifest.labels.get("distances") or {}
    explicit = section.get("mode", "seeded") == "explicit"
    part = epoch_part(store, epoch)
    where = os.fspath(store.path / part["path"] if part else store.path)
    columns = (["image", "d_org", "d_aug"] if need_distances else ["image"]) + (list(EXPLICIT_COLUMNS) if explicit else [])
    try:
        table = store.read_distances(epoch, columns=columns)
    except KeyError as exc:  # a column the mode requires is absent
        raise NrrError(where, f"distance table lacks column {exc}") from None
    n = store.num_images
    image = table.column("image").to_numpy()
    if table.num_rows != n or not np.array_equal(image, np.arange(n)):
        raise NrrError(where, f"distance table image ids do not match the store's images (epoch {epoch}: "
                              f"{table.num_rows} rows, expected images 0..{n - 1} once each, in order)")
    d_org = d_aug = None
    if need_distances:
        precision = section.get("precision", "fp16")
        if precision not in DISTANCE_TYPES:
            raise NrrError(store.manifest_path, f"unknown distance precision {precision!r}")
        problems, values = value_problems(table, precision, section, where)
        if problems or values is None:
            raise NrrError(where, f"{problems[0]} in epoch {epoch}")
        d_org, d_aug = values
    views = {c: table.column(c).to_numpy() for c in EXPLICIT_COLUMNS} if explicit else None
    return EpochLabels(d_org, d_aug, views, where)


def decode_values(values: np.ndarray, precision: str, section: Mapping[str, Any],
                  where: str | os.PathLike[str]) -> np.ndarray:
    """Stored distance values as float32 nats: int8 codes are dequantized with the manifest's scale."""
    if precision == "int8":
        qmax = (section.get("quant") or {}).get("max")
        if qmax is None:
            raise NrrError(where, "int8 distance table without labels.distances.quant.max in the manifest")
        return quant.decode(values, qmax)
    return values.astype(np.float32)


# -- checking and accounting ---------------------------------------------------------------------------
def file_problems(store: Store, part: Mapping[str, Any]) -> list[str]:
    """What is wrong with one listed distance file: unreadable, ids or epochs out of range, rows missing."""
    m = store.manifest
    where = store.path / part["path"]
    section = m.labels.get("distances") or {}
    precision = section.get("precision", "fp16")
    try:
        t = pq.read_table(store._table_source(part["path"]), columns=["epoch", "image", "d_org", "d_aug"])
    except (pa.ArrowException, OSError, KeyError) as exc:
        unless_out_of_memory(exc)
        return [f"{where}: unreadable distance table: {exc}"]
    problems = [f"{where}: {p}" for p in value_problems(t, precision, section, where)[0]]
    img, ep = t.column("image").to_numpy(), t.column("epoch").to_numpy()
    if img.size and (img.min() < 0 or img.max() >= m.num_images):
        problems.append(f"{where}: image ids outside 0..{m.num_images - 1}")
    if ep.size and (ep.min() < part["first_epoch"] or ep.max() > part["last_epoch"]):
        problems.append(f"{where}: epochs outside {part['first_epoch']}..{part['last_epoch']}")
    expected = (part["last_epoch"] - part["first_epoch"] + 1) * m.num_images
    if t.num_rows != expected:
        problems.append(f"{where}: {t.num_rows} rows, expected {expected} (every image in every epoch)")
    return problems


def value_problems(t: pa.Table, precision: str, section: Mapping[str, Any],
                   where: Any) -> tuple[list[str], tuple[np.ndarray, np.ndarray] | None]:
    """What readers would refuse or misread in the value columns of ``t`` (each problem without the file's name):
    another type than the declared precision, an int8 table without its scale, and distances no teacher produces
    (non-finite or negative cross-entropies); with the decoded ``(d_org, d_aug)`` when they could be decoded.
    The one check of readers (which refuse the first problem) and of `verify` (which lists them all)."""
    if precision not in DISTANCE_TYPES:
        return [f"unknown precision {precision!r} in the manifest"], None
    want = distance_schema(precision, False)
    problems = [f"column {c} holds {t.schema.field(c).type}, the manifest declares {precision} "
                f"({want.field(c).type})" for c in ("d_org", "d_aug") if t.schema.field(c).type != want.field(c).type]
    if problems:
        return problems, None
    try:
        d_org, d_aug = (decode_values(t.column(c).to_numpy(), precision, section, where) for c in ("d_org", "d_aug"))
    except NrrError as exc:
        return [exc.problem], None
    for name, v in (("d_org", d_org), ("d_aug", d_aug)):
        if not np.isfinite(v).all():
            problems.append(f"{int((~np.isfinite(v)).sum())} non-finite {name} values (a teacher's cross-entropy "
                            "is always finite)")
        elif v.size and v.min() < 0:
            problems.append(f"negative {name} values (a cross-entropy is never below 0)")
    return problems, (d_org, d_aug)


def split_bytes(store: Store) -> tuple[int, int]:
    """(value bytes, fixed bytes) of the store's distance files, from their Parquet metadata.

    Value bytes scale with the views: the compressed data of the value columns (and the view
    columns of explicit stores). Fixed bytes do not: file footers and magic, the ``epoch`` and
    ``image`` columns, and each value column chunk's page header and zstd frame (the header is what
    the uncompressed chunk holds beyond its raw values).
    """
    value = fixed = 0
    for part in store.distance_files():
        md = pq.ParquetFile(store._table_source(part["path"])).metadata
        values = 0
        for g in range(md.num_row_groups):
            for c in range(md.num_columns):
                col, schema = md.row_group(g).column(c), md.schema.column(c)
                if schema.name in FIXED_COLUMNS:
                    continue
                item = schema.length if schema.physical_type == "FIXED_LEN_BYTE_ARRAY" else \
                    _ITEM_BYTES.get(schema.physical_type, 0)
                header = max(0, col.total_uncompressed_size - round(col.num_values * item)) if item else 0
                page = header + (ZSTD_PAGE_BYTES if col.compression == "ZSTD" else 0)
                values += col.total_compressed_size - min(col.total_compressed_size, page)
        value += values
        fixed += fs.file_size(store.path / part["path"]) - values
    return value, fixed
