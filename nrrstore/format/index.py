"""The key index (``index.parquet``): one row per image, key -> label, shard and byte offsets.

Random access by key is one seek: the index gives the image member's byte range in its shard, the
way litdata keeps a key index beside its chunks. Every reader checks the columns against the
format's schema and refuses a label outside the class range, naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format.parquet import as_table, write_table
from nrrstore.format.tables import INDEX_SCHEMA


@dataclass
class IndexRow:
    """Where one image lives: its shard and the byte ranges of its image and metadata members."""

    key: str
    label: int
    shard: str
    ext: str
    offset: int
    size: int
    meta_offset: int
    meta_size: int


def write_index(path: str | os.PathLike[str], rows: Sequence[IndexRow]) -> None:
    """Write the index of ``rows`` (in store order: row i is image i)."""
    columns: dict[str, Any] = {"image": np.arange(len(rows), dtype=np.int32)}
    for field in INDEX_SCHEMA.names[1:]:
        columns[field] = [getattr(r, field) for r in rows]
    write_table(as_table(columns, INDEX_SCHEMA), path)


def read_index(source: Any, where: str | os.PathLike[str], num_classes: int) -> pa.Table:
    """The index table read from ``source`` (a path or an open file), checked; errors name ``where``."""
    try:
        table = pq.read_table(source)
    except FileNotFoundError:
        raise NrrError(where, "missing index") from None
    except (pa.ArrowException, OSError) as exc:
        unless_out_of_memory(exc)
        raise NrrError(where, f"unreadable index: {exc}") from None
    if not table.schema.equals(INDEX_SCHEMA):
        raise NrrError(where, "index columns do not match the format's schema")
    check_labels(table.column("label").to_numpy(), table.column("key"), num_classes, where)
    return table


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
