"""Arrow schemas of the store's Parquet tables, the single source of truth for `schemas/*.arrow.json`.

Why integer image ids instead of string keys in the distance table: a key column would cost more
bytes per view than the two distances themselves (ImageNet IPC 200 x 300 epochs = 60M rows). The id
joins to ``index.parquet``, which maps it to the key, so `duckdb`/`pyarrow` users still join on keys.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

#: Value types of the distance columns per precision mode.
DISTANCE_TYPES: dict[str, pa.DataType] = {"fp32": pa.float32(), "fp16": pa.float16(), "int8": pa.uint8()}

INDEX_SCHEMA = pa.schema(
    [
        pa.field("image", pa.int32(), nullable=False),  # position in store order, 0..N-1
        pa.field("key", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # path relative to the store root
        pa.field("ext", pa.string(), nullable=False),  # image member extension
        pa.field("offset", pa.int64(), nullable=False),  # byte offset of the image member's data
        pa.field("size", pa.int64(), nullable=False),
        pa.field("meta_offset", pa.int64(), nullable=False),  # the <key>.json member
        pa.field("meta_size", pa.int64(), nullable=False),
    ]
)

#: Columns that *explicit*-mode stores add to the distance table (the augmentation of each view), with
#: their on-disk dtypes: the one definition, from which the Arrow fields below and the replay's
#: column checks (`nrrstore.replay.recipe.ViewBatch`) both follow.
EXPLICIT_COLUMNS: dict[str, np.dtype] = {
    "crop_i": np.dtype(np.int32),
    "crop_j": np.dtype(np.int32),
    "crop_h": np.dtype(np.int32),
    "crop_w": np.dtype(np.int32),
    "flip": np.dtype(np.bool_),
    "partner": np.dtype(np.int32),
    "lam": np.dtype(np.float32),
    "box_y1": np.dtype(np.int16),
    "box_x1": np.dtype(np.int16),
    "box_y2": np.dtype(np.int16),
    "box_x2": np.dtype(np.int16),
}
EXPLICIT_FIELDS = [pa.field(name, pa.from_numpy_dtype(dtype), nullable=False) for name, dtype in EXPLICIT_COLUMNS.items()]


def distance_schema(precision: str = "fp16", explicit: bool = False) -> pa.Schema:
    """Schema of a distance table: one row per (epoch, image) view, one row group per epoch."""
    if precision not in DISTANCE_TYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(DISTANCE_TYPES)}")
    vt = DISTANCE_TYPES[precision]
    fields = [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("image", pa.int32(), nullable=False),
        pa.field("d_org", vt, nullable=False),
        pa.field("d_aug", vt, nullable=False),
    ]
    return pa.schema(fields + (EXPLICIT_FIELDS if explicit else []))


def schema_to_json(schema: pa.Schema) -> list[dict[str, Any]]:
    """A stable, human-readable rendering of an Arrow schema (what `schemas/*.arrow.json` hold)."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def all_schemas() -> dict[str, Any]:
    """Every table schema by file name under `schemas/`."""
    return {
        "index.arrow.json": schema_to_json(INDEX_SCHEMA),
        "distances.arrow.json": {
            "precisions": {p: str(t) for p, t in DISTANCE_TYPES.items()},
            "columns": schema_to_json(distance_schema("fp16")),
            "explicit_columns": schema_to_json(pa.schema(EXPLICIT_FIELDS)),
        },
    }


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_schema_files(folder: str) -> list[str]:
    """Regenerate ``schemas/*.arrow.json`` (run ``python -m nrrstore.format.tables schemas``)."""
    import os

    written = []
    for name, obj in all_schemas().items():
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(dump(obj))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for p in write_schema_files(sys.argv[1] if len(sys.argv) > 1 else "schemas"):
        print(p)
