"""Help text a new user reads: every option described, no placeholders, nothing cut at 80 columns."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from nrrstore_cli.main import app


def _commands(cmd, path):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, [*path, name])
    else:
        yield path, cmd


COMMANDS = list(_commands(get_command(app), []))


def test_every_option_and_argument_is_described() -> None:
    missing = [f"{' '.join(path)} {p.name}" for path, cmd in COMMANDS for p in cmd.params
               if p.name != "help" and not (getattr(p, "help", None) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help_at_80_columns_has_no_placeholders_or_cuts(path: list[str]) -> None:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    usage = res.stdout.splitlines()[0]
    assert usage.startswith("Usage: nrrstore") and "{" not in usage, usage
    assert "…" not in res.stdout and not re.search(r"\w\.\.\.\s*$", res.stdout, re.MULTILINE), res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
