"""`nrrstore inspect` and `nrrstore verify` from the command line, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from nrrstore_cli.main import app
from tests._builders import write_fmnist_store
from tests._real import FMNIST_CLASSES, FMNIST_TEST

runner = CliRunner()


def test_inspect_shards_json_and_grid(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(FMNIST_TEST), "--json", "--grid", str(tmp_path / "g.png"), "--per-class", "4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "shards" and info["num_images"] == 1000 and info["num_classes"] == 10
    assert info["per_class"] == {name: 100 for name in FMNIST_CLASSES}
    assert info["image_sizes"] == {"28x28x1": 1000}
    sheet = Image.open(tmp_path / "g.png")
    assert sheet.height >= 10 * 64  # a row per class
    assert len(np.unique(np.asarray(sheet.convert("L")))) > 50  # real pictures, not a blank canvas


def test_inspect_store_text(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s", per_class=3)
    res = runner.invoke(app, ["inspect", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "30 in 10 classes" in res.stdout and "28x28 L png" in res.stdout
    assert "{" not in res.stdout and "'" not in res.stdout  # a readable summary, no Python reprs


def test_verify_sound_and_damaged(tmp_path: Path) -> None:
    write_fmnist_store(tmp_path / "s")
    res = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert res.exit_code == 0 and res.stdout.strip().endswith("ok")
    for shard in ("shard-000000.tar", "shard-000003.tar"):
        p = tmp_path / "s/images" / shard
        data = bytearray(p.read_bytes())
        data[700] ^= 0x10
        p.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert not out["ok"] and len(out["problems"]) == 2
    res = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert res.exit_code == 1 and len(res.stdout.strip().splitlines()) == 2


def test_one_line_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert res.exit_code == 1 and res.stderr.strip() == f"nrrstore: {tmp_path / 'missing'}: no such store"
    write_fmnist_store(tmp_path / "s", per_class=1)
    m = json.loads((tmp_path / "s/manifest.json").read_text())
    m["format_version"] = "9.1"
    (tmp_path / "s/manifest.json").write_text(json.dumps(m))
    for cmd in (["verify"], ["inspect"]):
        res = runner.invoke(app, [*cmd, str(tmp_path / "s")])
        assert res.exit_code == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "9.1" in lines[0] and "manifest.json" in lines[0]
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no .tar shards found" in res.stderr and len(res.stderr.strip().splitlines()) == 1
