"""benchmarks/c10_report.py on the shipped issue-14 cells: the figures RESULTS.md quotes come out of them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "benchmarks" / "results" / "issue14-cifar10-final-cells"


@pytest.fixture(scope="module")
def c10_report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import c10_report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return c10_report


def test_dbr_share_pairs_seeds_and_skips_incomplete_ones(c10_report) -> None:
    per = {"dbr": {0: 0.55, 1: 0.50, 2: 0.40}, "onehot": {0: 0.50, 1: 0.40}, "kd": {0: 0.60, 1: 0.40, 2: 0.9}}
    # seed 0: (55 - 50) / (60 - 50); seed 1 has no KD gain to share; seed 2 has no one-hot student
    assert c10_report.dbr_share(per) == pytest.approx([0.5])


def test_report_reproduces_the_ipc50_figures_from_the_shipped_cells(c10_report, tmp_path: Path) -> None:
    (tmp_path / "cells").symlink_to(CELLS, target_is_directory=True)
    cells = c10_report.load_cells(tmp_path, 50, "convnet3")
    assert {len(cells[s][k]) for s in ("random", "rded", "nrr") for k in ("dbr", "onehot", "kd")} == {3}
    text = "\n".join(c10_report.report(cells, None, 50, "convnet3", None))
    assert "59.53 +- 0.06" in text and "59.69 +- 0.64" in text and "53.85 +- 0.48" in text
    assert "DBR keeps 61.5 +- 5.7% of the KD gain over one-hot on random images (3 seed(s)" in text
    assert "48.29 +- 1.19" in text and "59.54 +- 0.94" in text and "seeds per cell" not in text
    assert "DBR keeps 49.3 +- 5.1% of the KD gain over one-hot on nrr images (3 seed(s): 52.5, 52.0, 43.4)" in text
    assert "DBR keeps 62.9 +- 1.6% of the KD gain over one-hot on rded images (3 seed(s)" in text
