"""docs/cli.md: every command's --help at 80 columns, generated from the Typer app so that it cannot drift.

    python -m nrrstore_cli.reference > docs/cli.md      # regenerate (tests/test_cli_reference.py compares)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from nrrstore_cli.main import app

HEADER = """# Command-line reference

Every command's `--help` at 80 columns, generated from the Typer app by `python -m nrrstore_cli.reference >
docs/cli.md` (`tests/test_cli_reference.py` fails when this file and the app differ). The
[README](../README.md) tells what each command is for and shows them working together.
"""


def command_paths(cmd: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand, in the app's order (groups before their commands)."""
    cmd = get_command(app) if cmd is None else cmd
    if path:
        yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from command_paths(sub, (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    if res.exit_code != 0:
        raise RuntimeError(f"nrrstore {' '.join(path)} --help failed: {res.output}")
    return "\n".join(line.rstrip() for line in res.stdout.strip().splitlines())


def reference() -> str:
    parts = [HEADER, "## nrrstore\n", f"```text\n{help_text(())}\n```\n"]
    for path in command_paths():
        parts += [f"{'#' * min(1 + len(path), 4)} nrrstore {' '.join(path)}\n", f"```text\n{help_text(path)}\n```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
