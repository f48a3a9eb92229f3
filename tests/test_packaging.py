"""The package layout that pyproject.toml installs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_and_cli_is_not_top_level() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nrrstore").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"
    assert conf["package-dir"]["nrrstore_cli"] == "cli" and "cli" not in listed
    assert importlib.util.find_spec("nrrstore_cli") is not None


def test_library_never_imports_typer() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nrrstore").rglob("*.py")
                 if re.search(r"^\s*(import typer|from typer)", p.read_text(), re.MULTILINE)]
    assert offenders == []
