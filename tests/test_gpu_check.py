"""benchmarks/gpu_check.py's logic on the CPU (the GPU run itself needs a CUDA machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("single_thread")
def test_gpu_check_runs_on_the_cpu(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = gpu_check.main(["--device", "cpu", "--images", "12", "--epochs", "1", "--size", "32", "--batch-size", "8",
                          "--workers", "1", "--work", str(tmp_path / "w")])
    assert out["device"] == "cpu" and out["floor_views_per_s"] > 0 and len(out["relabel_views_per_s"]) == 2
    assert out["relabel_bytes_identical"] is True
    assert out["render_bit_identical"] is True and out["render_max_abs_diff"] == 0.0
    assert out["ce_gap_max"] == [0.0, 0.0]
    printed = capsys.readouterr().out
    assert "byte-identical: yes" in printed and "of the floor" in printed
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "torch.cuda.is_available()" in script and "--amp bf16" in script
