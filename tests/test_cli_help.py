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


def test_choice_types_match_the_library() -> None:
    """The CLI's choice types (cli/_common.py) list exactly the values the library accepts."""
    from typing import get_args

    from nrrstore.devices import AMP_MODES
    from nrrstore.distill import cidd_config as cidd
    from nrrstore.distill import nrr, pipeline
    from nrrstore.format.distances import DISTANCE_TYPES
    from nrrstore.models.convnet import NORMS
    from nrrstore.replay import recipe as augment
    from nrrstore.sources import prepare
    from nrrstore.train import defaults, losses, teacher
    from nrrstore_cli import _common as c

    pairs = {c.Method: pipeline.METHODS, c.Select: cidd.SELECT, c.PerImage: cidd.PER_IMAGE,
             c.CamScore: cidd.CAM_SCORES, c.Sources: cidd.SOURCES, c.NrrOptimizer: nrr.OPTIMIZERS,
             c.TeacherOptimizer: teacher.OPTIMIZERS, c.StoreImageFormat: pipeline.IMAGE_FORMATS,
             c.ShardImageFormat: prepare._IMAGE_FORMATS, c.Precision: tuple(DISTANCE_TYPES), c.Amp: (*AMP_MODES, "fp32"),
             c.ColourMode: prepare.MODES, c.Norm: NORMS, c.DbrNorm: losses.DBR_NORMS, c.CodecFill: defaults.CODEC_FILLS, c.CodecLoss: defaults.CODEC_LOSSES,
             c.MixMode: augment.MIX_MODES}
    for alias, values in pairs.items():
        assert sorted(get_args(alias)) == sorted(values), (alias, values)


# Options whose absence switches something off (no chart, no checkpoint, no cut, no check): they have no
# default value to show. Any other option shows its default, as click's `[default: ...]` or in its text.
OPT_IN = {"--grid", "--teacher", "--checkpoint", "--train", "--full-acc", "--plot", "--order-file", "--classes",
          "--epochs", "--per-class", "--limit", "--resize", "--limit-per-class", "--val", "--cache-dir",
          "--last-per-class", "--crop-scale"}


def test_every_default_shows() -> None:
    """U2 (issue 17): a default only in prose elsewhere, or nowhere, fails."""
    hidden = []
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if p.param_type_name != "option" or p.name == "help" or getattr(p, "is_flag", False):
                continue
            said = "default" in (p.help or "").lower()
            if p.default is None and not p.required and not said and p.opts[0] not in OPT_IN:
                hidden.append(f"{' '.join(path)} {p.opts[0]}")
            elif p.default is not None and not p.show_default and not said:
                hidden.append(f"{' '.join(path)} {p.opts[0]} (default {p.default!r} not shown)")
    assert hidden == []


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_fixed_choices_are_listed_in_help(path: list[str]) -> None:
    cmd = {tuple(p): c for p, c in COMMANDS}[tuple(path)]
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    for p in cmd.params:
        choices = getattr(getattr(p, "type", None), "choices", None)
        if choices:
            assert f"<{'|'.join(choices)}>" in res.stdout, (p.name, res.stdout)


@pytest.mark.parametrize("args", [["distill", "--method", "nrrdd"], ["teacher", "train", "--norm", "fancy"],
                                  ["prepare", "imagefolder", "x", "--format", "gif"],
                                  ["train-student", "s", "--labels", "soft"]])
def test_a_bad_choice_is_a_usage_error_naming_option_and_values(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"nrrstore: {args[-2]}: '{args[-1]}' is not one of '"), line
