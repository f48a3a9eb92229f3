"""`nrrstore inspect` and `nrrstore verify` from the command line, on real data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
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


@pytest.mark.parametrize(("name", "magic"), [("g.png", b"\x89PNG\r\n\x1a\n"), ("g.jpg", b"\xff\xd8\xff"),
                                           ("g.JPEG", b"\xff\xd8\xff")])
def test_inspect_grid_format_follows_the_extension(tmp_path: Path, name: str, magic: bytes) -> None:
    write_fmnist_store(tmp_path / "s", per_class=2)
    res = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--grid", str(tmp_path / name), "--per-class", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / name).read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "s"])  # no temporary file left


@pytest.mark.parametrize("name", ["g.gif", "g.pdf", "g"])
def test_inspect_grid_refuses_other_extensions_before_reading(tmp_path: Path, name: str) -> None:
    res = runner.invoke(app, ["inspect", str(tmp_path / "no-store"), "--grid", str(tmp_path / name)])
    assert res.exit_code == 1 and "Traceback" not in res.output  # the grid is refused before PATH is even read
    got = f"'.{name.split('.')[1]}'" if "." in name else "no extension"
    assert res.stderr.strip().splitlines() == [(f"nrrstore: {tmp_path / name}: the file extension decides the contact "
                                                f"sheet's format: give one of .png, .jpg, .jpeg (not {got})")]
    assert not any(tmp_path.iterdir())


def test_inspect_grid_needs_no_matplotlib(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    write_fmnist_store(tmp_path / "s", per_class=1)
    res = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def _bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D mask as [start, stop) pairs."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def test_contact_sheet_layout_names_and_cam_key(tmp_path: Path) -> None:
    """Every class name stays inside its own row however long or short; a title on top; with CAMs, a colour
    key of the CAM colours from 0 to 1 under the grid; the same inputs give the same bytes."""
    from nrrstore.inspect import _GAP, _MARGIN, _cam_colours, save_contact_sheet

    grey = np.full((28, 28), 128, np.uint8)
    classes = ["a", "x" * 300, "a long class name " * 10, "T-shirt/top"]
    samples = [(c, grey, 5 * c + k) for c in range(4) for k in range(5)]
    cams = np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (20, 28, 1))
    for name, with_cams in (("plain.png", None), ("cams.png", cams)):
        assert save_contact_sheet(iter(samples), classes, tmp_path / name, 5, cams=with_cams, title="a title") == 5
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("L"))
    h, w = plain.shape
    label_w = w - _MARGIN - 5 * (64 + _GAP)
    assert label_w <= 2 * _MARGIN + 192  # the name column is capped: long names wrap, they do not widen the sheet
    rows = _bands(plain[:, label_w + 10] == 128)  # the first image column: a band per class
    assert [b - a for a, b in rows] == [64] * 4
    for (a, b), (c, _) in zip(rows, [*rows[1:], (h, h)], strict=True):
        assert (plain[a:b, :label_w] < 128).any()  # the name is there, even "a"
        assert (plain[b:min(c, b + _GAP), :label_w] == 255).all()  # and nothing of it runs past its row
    assert (plain[:rows[0][0], :] < 128).sum() > 200  # the title and column headers above the grid
    rgb = np.asarray(Image.open(tmp_path / "cams.png").convert("RGB"))
    bar_w = min(256, rgb.shape[1] - 2 * _MARGIN)
    ramp = _cam_colours(np.linspace(0.0, 1.0, bar_w, dtype=np.float32))
    key = [y for y in range(rgb.shape[0]) if (rgb[y, _MARGIN:_MARGIN + bar_w] == ramp).all()]
    assert len(key) > 5 and min(key) > rows[-1][1]  # the colour bar, under the grid
    assert rgb.shape[0] > h  # room for the key's label and its 0, 0.5 and 1 ticks
    first = (tmp_path / "cams.png").read_bytes()
    save_contact_sheet(iter(samples), classes, tmp_path / "cams.png", 5, cams=cams, title="a title")
    assert (tmp_path / "cams.png").read_bytes() == first


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
