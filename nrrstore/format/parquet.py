"""Parquet files as the storage layer writes them: stable bytes, atomic, one row group per write.

Every table of a store (and of an export) goes through here, so the settings that make equal data
give equal bytes (no pandas metadata, fixed compression, statistics only where a reader needs them)
live in one place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nrrstore.format.atomic import CommitOrAbort, atomic_open


def write_table(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> None:
    """Write one table atomically with the settings every store table uses (zstd, no pandas metadata)."""
    options.setdefault("compression", "zstd")
    options.setdefault("write_statistics", True)
    with atomic_open(path) as f:
        pq.write_table(table, f, store_schema=False, **options)


def as_table(columns: Mapping[str, Any], schema: pa.Schema | None = None) -> pa.Table:
    """A table of ``columns`` (numpy arrays, lists or Arrow arrays), typed by ``schema`` when given."""
    if schema is None:
        return pa.table({name: _array(v) for name, v in columns.items()})
    return pa.table({f.name: _array(columns[f.name], f.type) for f in schema}, schema=schema)


def _array(values: Any, type_: pa.DataType | None = None) -> Any:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if type_ is None or values.type == type_ else values.cast(type_)
    return pa.array(np.asarray(values) if not isinstance(values, list) else values, type=type_)


class RowGroupFile(CommitOrAbort):
    """A Parquet file written one row group per :meth:`write`, under a temporary name until :meth:`close`.

    ``schema`` fixes the column types (else the first write's columns decide); ``csv`` also streams
    the rows to a CSV file beside it (same columns). A failure or :meth:`abort` leaves no file.
    """

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema | None = None, *,
                 csv: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.path = Path(path)
        self.schema = schema
        self._options = {"compression": "zstd", "store_schema": False, **options}
        self._files = [atomic_open(self.path)] + ([atomic_open(csv)] if csv is not None else [])
        self._handles = [ctx.__enter__() for ctx in self._files]
        self._parquet: pq.ParquetWriter | None = None
        self._csv: pacsv.CSVWriter | None = None
        self._want_csv = csv is not None

    def write(self, columns: Mapping[str, Any]) -> None:
        table = as_table(columns, self.schema)
        if self._parquet is None:
            self.schema = table.schema
            self._parquet = pq.ParquetWriter(self._handles[0], table.schema, **self._options)
            if self._want_csv:
                self._csv = pacsv.CSVWriter(self._handles[1], table.schema)
        self._parquet.write_table(table, row_group_size=max(1, table.num_rows))
        if self._csv is not None:
            self._csv.write_table(table)

    def close(self) -> None:
        """Finish the file(s) and put them in place (no write and a ``schema``: a valid file of no rows)."""
        try:
            if self._parquet is None and self.schema is not None:
                self._parquet = pq.ParquetWriter(self._handles[0], self.schema, **self._options)
            for w in (self._parquet, self._csv):
                if w is not None:
                    w.close()
        except BaseException:
            self.abort()
            raise
        for ctx in self._files:
            ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the file(s); on a full disk closing fails too, and they must still go."""
        for w in (self._parquet, self._csv):
            with contextlib.suppress(Exception):
                if w is not None:
                    w.close()
        for ctx in self._files:
            with contextlib.suppress(BaseException):
                ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
