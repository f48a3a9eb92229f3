"""Who may know what: the storage layer owns the bytes on disk, sampling sits below distill and train.

A source scan, so that a shortcut around the layers (a Parquet write in a command, a store file name
spelled in a trainer) fails here rather than in a format change later.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_FORMAT = sorted(p for d in ("nrrstore", "cli") for p in (ROOT / d).rglob("*.py")
                        if "format" not in p.relative_to(ROOT).parts)
#: The store's own names, which only nrrstore/format/layout.py spells.
STORE_NAMES = re.compile(r"""["'](?:manifest\.json|index\.parquet|cams\.zarr|softlabels\.zarr)["']"""
                         r"""|["'](?:labels/|\.relabel\b|\.tmp-|\.old-)""")
#: Known exceptions (none since the fsspec layer replaced the hand-written HTTP client in train/loader.py).
ALLOWED: set[tuple[str, str]] = set()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_storage_layer_writes_parquet_or_zarr() -> None:
    offenders = [(p.relative_to(ROOT).as_posix(), m) for p in OUTSIDE_FORMAT for m in _imports(p)
                 if m.split(".")[0] in ("pyarrow", "zarr")]
    assert offenders == []


def test_only_the_storage_layer_spells_store_file_names() -> None:
    found = []
    for p in OUTSIDE_FORMAT:
        rel = p.relative_to(ROOT).as_posix()
        for line in p.read_text(encoding="utf-8").splitlines():
            code = line.split("#")[0]
            for name in STORE_NAMES.findall(code):
                if (rel, name) not in ALLOWED and '"""' not in line:
                    found.append((rel, name, line.strip()))
    assert found == []


def test_sampling_sits_below_distill_and_train() -> None:
    for p in (ROOT / "nrrstore" / "sampling").rglob("*.py"):
        assert not any(m.startswith(("nrrstore.distill", "nrrstore.train")) for m in _imports(p)), p
    cidd = _imports(ROOT / "nrrstore" / "distill" / "cidd.py")
    assert not any(m.startswith("nrrstore.train") for m in cidd)

