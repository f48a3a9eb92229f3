"""docs/cli.md is the app's own --help, regenerated: a changed option that is not regenerated fails here."""

from __future__ import annotations

from nrrstore_cli.reference import command_paths, reference
from tests.conftest import ROOT


def test_docs_cli_md_is_the_current_help() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert text == reference(), "docs/cli.md is stale: python -m nrrstore_cli.reference > docs/cli.md"


def test_every_command_has_a_section() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    paths = list(command_paths())
    assert ("distill",) in paths and ("teacher", "train") in paths and ("import", "rded") in paths
    for path in paths:
        assert f" nrrstore {' '.join(path)}\n" in text and f"Usage: nrrstore {' '.join(path)}" in text, path
