"""Issue 17: `prepare --workers N` writes the same bytes as one process, fails on the same file in the same one
line, leaves nothing behind, and stops (with its workers) on SIGTERM and Ctrl-C."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from nrrstore.errors import NrrError
from nrrstore.sources import prepare_idx, prepare_imagefolder, workers
from nrrstore_cli import prepare_cmd
from tests._builders import make_app, write_imagefolder
from tests._procs import alive, children
from tests._real import fmnist, photo_crops

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".lock-")))


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(make_app(prepare_cmd), [str(a) for a in args])


@pytest.fixture(scope="module")
def fm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real Fashion-MNIST PNGs in 10 class folders."""
    root = tmp_path_factory.mktemp("fm") / "folders"
    write_imagefolder(root, 12)
    return root


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 RGB JPEGs (crops of real photos, 40x40) in 3 class folders."""
    root = tmp_path_factory.mktemp("photos") / "folders"
    for i, (img, label) in enumerate(photo_crops(60, size=40)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{label}" / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def fm_idx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 real Fashion-MNIST images as a gzipped IDX pair."""
    samples = fmnist("train", 30)
    d = tmp_path_factory.mktemp("idx")
    out = []
    for name, arr in (("train-images-idx3-ubyte.gz", np.stack([s[1] for s in samples])),
                      ("train-labels-idx1-ubyte.gz", np.array([s[2] for s in samples], dtype=np.uint8))):
        raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        (d / name).write_bytes(gzip.compress(raw, mtime=0))
        out.append(d / name)
    return out[0], out[1]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few samples: many more batches than the pool keeps in flight."""
    monkeypatch.setattr(workers, "FILES_BATCH", 7)
    monkeypatch.setattr(workers, "PIXELS_BATCH", 11)


def both(fn: Any, tmp_path: Path, **kw: Any) -> tuple[dict[str, str], list[tuple]]:
    """``fn`` with 0 and 2 workers: the files of the first output, and the progress calls of both."""
    outs, calls = [], []
    for n in (0, 2):
        seen: list[tuple] = []
        fn(out_dir=tmp_path / f"w{n}", workers=n, progress=lambda *a, seen=seen: seen.append(a), **kw)
        outs.append(files_of(tmp_path / f"w{n}"))
        calls.append(seen)
    assert outs[0] == outs[1]
    assert calls[0] == calls[1] and calls[0][-1][0] == "write shards" and calls[0][-1][1] == calls[0][-1][2]
    return outs[0], calls[0]


@pytest.mark.parametrize("kw", [{}, {"image_format": "source"}, {"resize": 20, "mode": "RGB"}, {"mode": "RGB"},
                                {"image_format": "webp", "gzip": True, "per_class": 9, "skip_per_class": 2}],
                         ids=["png", "source", "resize-rgb", "rgb", "webp-gzip-parts"])
def test_imagefolder_bytes_do_not_depend_on_workers(tmp_path: Path, fm_folder: Path, kw: dict,
                                                    small_batches: None) -> None:
    files, calls = both(lambda **a: prepare_imagefolder(fm_folder, shard_size=25, **a), tmp_path, **kw)
    assert {"classes.txt", "shards.json"} < set(files) and len(files) >= 5 and len(calls) >= 2


@pytest.mark.parametrize("kw", [{"image_format": "source"}, {"resize": 32}, {"mode": "L", "image_format": "jpg"}],
                         ids=["source", "resize", "grey-jpg"])
def test_imagefolder_of_jpegs_bytes_do_not_depend_on_workers(tmp_path: Path, photo_folder: Path, kw: dict) -> None:
    files, _ = both(lambda **a: prepare_imagefolder(photo_folder, shard_size=16, **a), tmp_path, **kw)
    assert len(files) == 6


@pytest.mark.parametrize("kw", [{}, {"resize": 32, "mode": "RGB"}, {"image_format": "webp", "per_class": 20,
                                                                    "skip_per_class": 5, "limit": 150}],
                         ids=["png", "resize-rgb", "webp-parts"])
def test_idx_bytes_do_not_depend_on_workers(tmp_path: Path, fm_idx: tuple[Path, Path], kw: dict,
                                            small_batches: None) -> None:
    files, _ = both(lambda **a: prepare_idx(*fm_idx, shard_size=40, **a), tmp_path, **kw)
    assert "train-000000.tar" in files


def test_idx_arrays_bytes_do_not_depend_on_workers(tmp_path: Path, small_batches: None) -> None:
    samples = fmnist("train", 8)
    images, labels = np.stack([s[1] for s in samples]), np.array([s[2] for s in samples])
    both(lambda **a: prepare_idx(images, labels, shard_size=30, skip=3, **a), tmp_path)


def _break(root: Path, how: str) -> str:
    """Spoil one file in the middle of the tree, and a later one too (the first in input order is to be named);
    returns what the error names: the file, or for a failed encode its key."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    bad, later = files[len(files) // 2], files[len(files) // 2 + 9]
    if how == "corrupt":
        for p in (bad, later):
            p.write_bytes(p.read_bytes()[:60])
    elif how == "size":
        for p in (bad, later):
            Image.open(p).resize((30, 28)).save(p)
    else:  # a BMP that --format source cannot keep (it fails when encoding, in the writer's turn)
        for p in (bad, later):
            Image.open(p).save(p.with_suffix(".bmp"))
            p.unlink()
        return f"'train_{len(files) // 2:07d}'"
    return str(bad)


@pytest.mark.parametrize("how", ["corrupt", "size", "bmp-source"])
def test_a_bad_file_fails_alike_and_leaves_nothing(tmp_path: Path, fm_folder: Path, how: str,
                                                   small_batches: None) -> None:
    root = tmp_path / "in"
    shutil.copytree(fm_folder, root)
    bad = _break(root, how)
    fmt = "source" if how == "bmp-source" else "png"
    errors = []
    for n in (0, 2):
        with pytest.raises(NrrError) as info:
            prepare_imagefolder(root, tmp_path / f"w{n}", shard_size=10, image_format=fmt, workers=n)
        errors.append(str(info.value))
        assert not (tmp_path / f"w{n}").exists() and leftovers(tmp_path) == []
    assert errors[0] == errors[1] and len(errors[0].splitlines()) == 1
    assert bad in errors[0]


def test_cli_workers(tmp_path: Path, fm_folder: Path, fm_idx: tuple[Path, Path]) -> None:
    for n in (0, 2):
        res = run_cli("prepare", "imagefolder", fm_folder, "--out", tmp_path / f"f{n}", "--workers", n)
        assert res.exit_code == 0, res.output
        res = run_cli("prepare", "idx", *fm_idx, "--out", tmp_path / f"i{n}", "--workers", n, "--shard-size", 100)
        assert res.exit_code == 0, res.output
    assert files_of(tmp_path / "f0") == files_of(tmp_path / "f2")
    assert files_of(tmp_path / "i0") == files_of(tmp_path / "i2")
    res = run_cli("prepare", "imagefolder", fm_folder, "--out", tmp_path / "x", "--workers", 65)
    assert res.exit_code == 2 and "--workers" in res.stderr
    with pytest.raises(NrrError, match="more than 64"):
        prepare_imagefolder(fm_folder, tmp_path / "x", workers=65)


def test_cli_corrupt_file_with_workers_is_one_line(tmp_path: Path, fm_folder: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(fm_folder, root)
    bad = _break(root, "corrupt")
    res = run_cli("prepare", "imagefolder", root, "--out", tmp_path / "o", "--workers", 2)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"nrrstore: {bad}: "), res.stderr
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


# -- stopping -------------------------------------------------------------------------------------------
def _ctrl_c_default() -> None:
    """A job started in the background by a shell without job control inherits SIGINT ignored (so does a test
    run started that way); a terminal's Ctrl-C reaches a foreground command with the default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "nrrstore: terminated"),
                                                   (signal.SIGINT, 130, "nrrstore: interrupted")],
                         ids=["sigterm", "ctrl-c"])
def test_a_stop_ends_the_workers_and_leaves_nothing(tmp_path: Path, fm_folder: Path, sig: int, code: int,
                                                    line: str) -> None:
    root = tmp_path / "in"
    for copy in range(20):  # 2400 files: many seconds of work
        for p in fm_folder.rglob("*.png"):
            (root / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, root / p.parent.name / f"{copy:02d}{p.name}")
    # A new session stands for a terminal: Ctrl-C signals the whole process group, workers included.
    proc = subprocess.Popen([sys.executable, "-m", "nrrstore_cli.main", "prepare", "imagefolder", str(root),
                             "--out", str(tmp_path / "out"), "--workers", "2", "--resize", "96", "--mode", "RGB"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_ctrl_c_default)  # noqa: PLW1509 (single-threaded here)
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = children(proc.pid)
    assert proc.poll() is None and len(kids) >= 2, "the workers never started"
    time.sleep(0.3)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip().splitlines() == [line], err[-2000:]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids)
