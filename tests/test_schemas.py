"""`schemas/` must say exactly what the code writes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq

from nrrstore.format.reader import Store
from nrrstore.format.tables import INDEX_SCHEMA, all_schemas, dump
from tests._builders import write_fmnist_store

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def test_arrow_schema_files_match_code() -> None:
    for name, obj in all_schemas().items():
        assert (SCHEMAS / name).read_text() == dump(obj), f"schemas/{name} is stale: run python -m nrrstore.format.tables schemas"


def test_written_manifest_validates_and_index_matches(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s", per_class=1)
    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    jsonschema.validate(manifest, schema)
    assert pq.read_schema(tmp_path / "s/index.parquet").equals(INDEX_SCHEMA)
    assert Store(tmp_path / "s").num_images == 10


def test_schema_rejects_unknown_major(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s", per_class=1)
    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    manifest["format_version"] = "2.0"
    assert not jsonschema.Draft202012Validator(schema).is_valid(manifest)
