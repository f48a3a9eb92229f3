"""R3: after kill -9 of a multi-process command, none of its processes remains after 10 s, and the rerun
completes byte-identical (issue 18). Pool and loader workers ask the kernel to kill them with their parent
(`nrrstore.processes.die_with_parent`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._builders import make_fixture
from tests._procs import alive, children
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def test_killed_convert_leaves_no_worker_and_reruns_identically(tmp_path: Path) -> None:
    fx = make_fixture(tmp_path / "fx", ["cutmix"] * 12, per_class=3, batch=6)
    cmd = [sys.executable, "-m", "nrrstore_cli.main", "convert-softlabels", str(fx.labels_dir), "--images",
           str(fx.images_dir), "--out", str(tmp_path / "s"), "--workers", "2", "--epochs-per-file", "12"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in children(proc.pid) if alive(p)]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the conversion finished before its pool started (machine too fast for this check)")
    assert len(workers) >= 2, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(alive(p) for p in workers), "pool workers outlived their killed parent"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    clean = subprocess.run([*cmd[:-6], "--out", str(tmp_path / "t"), *cmd[-4:]], env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert clean.returncode == 0, clean.stderr
    files = [{k: f[k] for k in ("path", "sha256")} for f in json.loads((tmp_path / "s/manifest.json").read_text())["files"]]
    again = [{k: f[k] for k in ("path", "sha256")} for f in json.loads((tmp_path / "t/manifest.json").read_text())["files"]]
    assert files == again
