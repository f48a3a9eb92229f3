"""README.md's examples must work: its Python blocks run, its command lines use options that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

from nrrstore_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in re.findall(r"```(\w*)\n(.*?)```", README, re.DOTALL) if kind == lang]


@pytest.mark.usefixtures("single_thread")
def test_python_blocks_run(tmp_path: Path, monkeypatch) -> None:
    assert blocks("python"), "README.md has no Python example"
    monkeypatch.chdir(tmp_path)  # as from the repository root, writing into a scratch out/
    (tmp_path / "data").symlink_to(ROOT / "data")
    for i, code in enumerate(blocks("python")):
        block = compile(code, f"README.md python block {i + 1}", "exec")
        exec(block, {"__name__": "__readme__"})  # noqa: S102 - running README's examples is what this test does


def _command_lines() -> list[list[str]]:
    """Every ``nrrstore ...`` command of the sh blocks and of inline code, as tokens."""
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    lines = [ln.split("#")[0] for ln in text.splitlines()] + re.findall(r"`(nrrstore [^`]+)`", README)
    out = []
    for line in lines:
        m = re.search(r"(?:^|\s)(?:nrrstore|-m nrrstore_cli\.main)\s+(.*)", line)
        if m:
            out.append(shlex.split(m.group(1).replace("\\|", "|").replace("[", " ").replace("]", " ")))
    return out


def test_command_lines_use_real_commands_and_options() -> None:
    root = get_command(app)
    lines = _command_lines()
    assert len(lines) > 20
    for tokens in lines:
        cmd, path = root, []
        while hasattr(cmd, "commands") and tokens and tokens[0] in cmd.commands:
            path.append(tokens[0])
            cmd = cmd.commands[tokens.pop(0)]
        assert not hasattr(cmd, "commands"), f"no command in `nrrstore {' '.join(path + tokens)}`"
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for t in tokens:
            if t.startswith("--"):
                assert t.split("=")[0] in known, f"`nrrstore {' '.join(path)}` has no option {t}"
