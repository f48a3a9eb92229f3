"""One set of defaults (issue 16): the presets are the single source, and the config classes, `distill --help`,
README and the manifest all agree with them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nrrstore.distill.cidd_config import CiddConfig
from nrrstore.distill.nrr import NrrConfig
from nrrstore.distill.pipeline import method_config
from nrrstore.distill.presets import (
    AUTO,
    METHODS,
    NRR_CIDD,
    NRR_REFINE,
    PRESETS,
    default_factor,
    default_text,
    nrr_pool,
    preset_table,
)
from nrrstore_cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def test_config_classes_take_the_nrr_preset() -> None:
    cidd = {f.name: f.default for f in dataclasses.fields(CiddConfig) if f.default is not dataclasses.MISSING}
    for key, value in NRR_CIDD.items():
        if value == AUTO:
            assert key not in cidd, f"{key} is resolved per run and must have no class default"
        else:
            assert cidd[key] == value, key
    assert dataclasses.asdict(NrrConfig()) == NRR_REFINE


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size, ipc", [(28, 10), (224, 1)])
def test_method_config_resolves_the_table(method: str, size: int, ipc: int) -> None:
    cfg = method_config(method, ipc, size)
    base_c, base_n = PRESETS[method]
    got = cfg.to_dict()
    factor = default_factor(size) if base_c["factor"] == AUTO else base_c["factor"]
    mipc = nrr_pool(ipc, factor, base_c["cam_top"]) if base_c["mipc"] == AUTO else base_c["mipc"]
    want_c = {**base_c, "factor": factor, "mipc": mipc, "ipc": ipc}
    for key, value in want_c.items():  # what the manifest records (DistillConfig.to_dict is its "method")
        assert got["cidd"][key] == (list(value) if isinstance(value, tuple) else value), (method, key)
    for key, value in base_n.items():
        assert got["nrr"][key] == (list(value) if isinstance(value, tuple) else value), (method, key)


def test_overrides_win_and_none_is_ignored() -> None:
    cfg = method_config("nrr", 10, 32, cidd={"mipc": 300, "scale": None}, nrr={"alpha_bn": 0.01})
    assert (cfg.cidd.mipc, cfg.cidd.scale, cfg.nrr.alpha_bn) == (300, NRR_CIDD["scale"], 0.01)


def test_help_shows_the_presets_defaults() -> None:
    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    text = " ".join(res.stdout.split())
    for key in ("num_crop", "select", "per_image", "scale", "cam_top", "cam_score", "correct_only", "sources",
                "eps", "iterations", "alpha_bn", "optimizer"):
        assert default_text(key) in text, key


def test_readme_table_is_the_presets() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- presets -->\n(.*?)\n<!-- /presets -->", readme, re.DOTALL)
    assert table is not None and table.group(1) == preset_table()


def test_old_manifests_keep_their_meaning() -> None:
    """A manifest from before a key was recorded means v0.1's behaviour, not today's preset."""
    old = {"ipc": 1, "factor": 1, "mipc": 5, "num_crop": 5, "per_image": "cam", "select": "low", "cam_top": 0.5,
           "scale": [0.08, 1.0], "ratio": [1.0, 1.0], "seed": 0, "batch_size": 64}
    cfg = CiddConfig.from_dict(old)
    assert (cfg.sources, cfg.correct_only, cfg.cam_score, cfg.crop_sampler) == ("first", False, "share", 1)


def test_student_defaults_have_one_source() -> None:
    """train_student, evaluate's protocol, the losses and both commands' help take the student recipe's
    defaults from nrrstore.train.defaults."""
    import inspect

    from nrrstore.evaluation import StudentProtocol
    from nrrstore.train.defaults import STUDENT, protocol_values
    from nrrstore.train.losses import dbr_loss
    from nrrstore.train.student import train_student

    sig = inspect.signature(train_student).parameters
    proto = StudentProtocol()
    resolved = protocol_values("nrrstore")  # lr, weight decay and temperature: None, resolved by the protocol
    for key, value in STUDENT.items():
        default = resolved[key] if sig[key].default is None and key in resolved else sig[key].default
        assert default == value and getattr(proto, key) == value, key
    assert inspect.signature(dbr_loss).parameters["norm"].default == STUDENT["dbr_norm"]
    for cmd in (["train-student"], ["evaluate"]):
        res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        text = " ".join(res.stdout.split())
        assert f"[default: {STUDENT['dbr_norm']}]" in text and f"[default: {STUDENT['epochs']};" in text, cmd


def test_every_command_ends_its_help_with_an_example_that_parses() -> None:
    """Each command's help ends with one example (cli/_common.py EXAMPLES), and the example's options exist and
    parse (click builds the command's context from it without running it)."""
    import shlex

    import typer

    from nrrstore_cli._common import EXAMPLES

    root = typer.main.get_command(app)
    leaves: list[str] = []

    def walk(cmd: Any, path: list[str]) -> None:  # typer's own click: groups are what have commands
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            leaves.append(" ".join(path))

    walk(root, [])
    assert sorted(leaves) == sorted(EXAMPLES)
    for name, line in EXAMPLES.items():
        words = shlex.split(line)[1:]
        res = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "100"}, terminal_width=100)
        assert res.stdout.rstrip().endswith(line), name
        cmd, args = root, words
        while hasattr(cmd, "commands"):
            cmd, args = cmd.commands[args[0]], args[1:]
        cmd.make_context(name, list(args))  # raises click.UsageError on an unknown option or a missing one
