"""`prepare`: IDX and ImageFolder -> WebDataset shards, checked against the sources with plain webdataset."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner, Result

from nrrstore.errors import NrrError
from nrrstore.sources import (
    iter_samples,
    prepare_idx,
    prepare_imagefolder,
    read_class_names,
    read_idx_pair,
    resolve_shards,
    write_shards,
)
from nrrstore_cli import prepare_cmd
from tests._builders import make_app

ROOT = Path(__file__).resolve().parents[1]
FMNIST_CLASSES = ROOT / "data" / "fashion-mnist" / "classes.txt"


# ---------------------------------------------------------------- helpers


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(make_app(prepare_cmd), [str(a) for a in args])


def assert_cli_error(result: Result, *parts: object) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nrrstore: ")
    for part in parts:
        assert str(part) in lines[0], f"{part!r} not in {lines[0]!r}"


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def read_plain(shards: list[str]) -> list[dict]:
    """Read shards with plain webdataset, no nrrstore involved."""
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("l8"))


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def first_per_class(labels: np.ndarray, n: int) -> list[int]:
    """Indices of the first n images of each class in file order, computed without nrrstore."""
    seen: dict[int, int] = {}
    out = []
    for i, lab in enumerate(labels.tolist()):
        if seen.get(lab, 0) < n:
            seen[lab] = seen.get(lab, 0) + 1
            out.append(i)
    return out


@pytest.fixture(scope="module")
def small_idx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """40 real Fashion-MNIST images (from the committed subset) as a gzipped IDX pair."""
    root = ROOT / "data" / "fashion-mnist" / "test"
    samples = [s for _, s in zip(range(40), iter_samples(root), strict=False)]
    images = np.stack([s.image for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.uint8)
    d = tmp_path_factory.mktemp("idx")
    # named as MNIST names its files: prepare derives the shard prefix "train" from the name
    return (write_idx(d / "train-images-idx3-ubyte.gz", images, True),
            write_idx(d / "train-labels-idx1-ubyte.gz", labels, True), images, labels)


# ---------------------------------------------------------------- round trips against real data


def test_cli_idx_round_trip_debian(tmp_path: Path, fmnist_idx: dict[str, Path]) -> None:
    out = tmp_path / "out"
    result = run_cli("prepare", "idx", fmnist_idx["train_images"], fmnist_idx["train_labels"], "--out", out,
                     "--per-class", 20, "--shard-size", 64, "--classes", FMNIST_CLASSES, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 200 and summary["per_class"] == [20] * 10 and len(summary["shards"]) == 4
    images, labels = read_idx_pair(fmnist_idx["train_images"], fmnist_idx["train_labels"])
    got = read_plain(sorted(str(p) for p in out.glob("train-*.tar")))
    assert [int(s["__key__"].split("_")[1]) for s in got] == first_per_class(labels, 20)
    for s in got:
        i = int(s["__key__"].split("_")[1])
        assert np.array_equal(s["png"], images[i]) and s["cls"] == labels[i]
    assert read_class_names(out) == FMNIST_CLASSES.read_text().splitlines()


@pytest.mark.parametrize(("split", "per_class"), [("train", 300), ("test", 100)])
def test_committed_subset_matches_debian(fmnist_idx: dict[str, Path], fmnist_train_shards: Path,
                                         fmnist_test_shards: Path, split: str, per_class: int) -> None:
    folder = fmnist_train_shards if split == "train" else fmnist_test_shards
    images, labels = read_idx_pair(fmnist_idx[f"{split}_images"], fmnist_idx[f"{split}_labels"])
    got = read_plain(resolve_shards(folder))
    idx = [int(s["__key__"].split("_")[1]) for s in got]
    assert idx == first_per_class(labels, per_class)
    for s, i in zip(got, idx, strict=True):
        assert np.array_equal(s["png"], images[i]) and s["cls"] == labels[i], s["__key__"]


def test_committed_index_matches_files(fmnist_train_shards: Path, fmnist_test_shards: Path) -> None:
    for folder in (fmnist_train_shards, fmnist_test_shards):
        index = json.loads((folder / "shards.json").read_text())
        assert sorted(p.name for p in folder.glob("*.tar.gz")) == [s["name"] for s in index["shards"]]
        for s in index["shards"]:
            assert sha256(folder / s["name"]) == s["sha256"] and (folder / s["name"]).stat().st_size == s["bytes"]


def test_regenerating_committed_train_gives_same_bytes(tmp_path: Path, fmnist_idx: dict[str, Path],
                                                       fmnist_train_shards: Path) -> None:
    summary = prepare_idx(fmnist_idx["train_images"], fmnist_idx["train_labels"], tmp_path / "train",
                          class_names=FMNIST_CLASSES.read_text().splitlines(), per_class=300, shard_size=1000,
                          prefix="train", gzip=True)
    for s in summary["shards"]:
        assert sha256(tmp_path / "train" / s["name"]) == sha256(fmnist_train_shards / s["name"])
    for name in ("classes.txt", "shards.json"):
        assert (tmp_path / "train" / name).read_bytes() == (fmnist_train_shards / name).read_bytes()


@pytest.mark.parametrize("gz", [False, True])
def test_deterministic_bytes(tmp_path: Path, small_idx: tuple, gz: bool) -> None:
    img, lab, images, labels = small_idx
    digests = []
    for run in ("a", "b"):
        summary = prepare_idx(img, lab, tmp_path / run, shard_size=16, gzip=gz)
        assert summary["count"] == 40 and [s["count"] for s in summary["shards"]] == [16, 16, 8]
        files = sorted((tmp_path / run).iterdir())
        digests.append({p.name: sha256(p) for p in files})
        assert all(s["sha256"] == digests[-1][s["name"]] for s in summary["shards"])
    assert digests[0] == digests[1]
    ext = ".tar.gz" if gz else ".tar"
    assert sorted(digests[0]) == ["classes.txt", "shards.json"] + [f"train-{i:06d}{ext}" for i in range(3)]
    if gz:  # no name and no time in the gzip header
        head = (tmp_path / "a" / "train-000000.tar.gz").read_bytes()[:10]
        assert head[3] == 0 and head[4:8] == b"\0\0\0\0"
    got = read_plain(resolve_shards(tmp_path / "a"))
    assert [s["__key__"] for s in got] == [f"train_{i:07d}" for i in range(40)]
    assert all(np.array_equal(s["png"], images[i]) and s["cls"] == labels[i] for i, s in enumerate(got))


def _photo_crops() -> dict[str, list[np.ndarray]]:
    from skimage import data

    crops: dict[str, list[np.ndarray]] = {}
    for name in ("astronaut", "coffee", "chelsea", "camera"):
        photo = getattr(data, name)()
        crops[name] = [photo[y:y + 48, x:x + 64].copy() for y, x in [(40, 60), (100, 150), (200, 20), (150, 200)]]
    return crops


def test_imagefolder_round_trip_photos(tmp_path: Path) -> None:
    crops = _photo_crops()
    root = tmp_path / "photos"
    for cls, images in crops.items():
        (root / cls).mkdir(parents=True)
        for i, im in enumerate(images):
            # RGB classes: alternate lossless PNG and JPEG files; camera is grey.
            fmt = "jpg" if (i % 2 and im.ndim == 3) else "png"
            Image.fromarray(im).save(root / cls / f"{i:03d}.{fmt}", quality=90)
    # What each file decodes to (JPEG is lossy), read back independently with Pillow.
    files = [p for cls in sorted(crops) for p in sorted((root / cls).iterdir())]
    expected = [np.asarray(Image.open(p)) for p in files]
    classes = sorted(crops)

    summary = prepare_imagefolder(root, tmp_path / "keep", shard_size=5, prefix="photo")
    assert summary["count"] == 16 and summary["per_class"] == [4, 4, 4, 4] and len(summary["shards"]) == 4
    assert read_class_names(tmp_path / "keep") == classes
    # Plain webdataset, undecoded: the PNG bytes, opened with Pillow.
    raw = list(wds.WebDataset(resolve_shards(tmp_path / "keep"), shardshuffle=False, empty_check=False))
    assert len(raw) == 16
    for i, s in enumerate(raw):
        assert s["__key__"] == f"photo_{i:07d}" and int(s["cls"]) == classes.index(files[i].parent.name)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), expected[i]), files[i]
    ours = list(iter_samples(tmp_path / "keep", class_names=classes))
    assert [s.image.ndim for s in ours] == [2 if "camera" in str(p) else 3 for p in files]
    assert all(np.array_equal(s.image, exp) for s, exp in zip(ours, expected, strict=True))

    summary = prepare_imagefolder(root, tmp_path / "rgb", mode="RGB", per_class=2, gzip=True)
    assert summary["count"] == 8
    rgb = list(iter_samples(tmp_path / "rgb"))
    assert all(s.image.ndim == 3 for s in rgb)
    cam = [s for s in rgb if s.label == classes.index("camera")]
    assert len(cam) == 2 and all(np.array_equal(s.image[:, :, 1], crops["camera"][i]) for i, s in enumerate(cam))


# ---------------------------------------------------------------- write_shards contract


def test_write_shards_rejects_bad_samples(tmp_path: Path, small_idx: tuple) -> None:
    _, _, images, _ = small_idx
    names = ["a", "b"]
    bad_cases = [
        ([("k1", images[0], 0), ("k1", images[1], 1)], "duplicate key 'k1'"),
        ([("k.1", images[0], 0)], "contains a dot"),
        ([("k1", images[0], 2)], "label 2 outside the 2 classes"),
        ([("k1", images[0].astype(np.float32), 0)], "uint8"),
        ([], "no samples"),
    ]
    for samples, problem in bad_cases:
        with pytest.raises(NrrError, match=problem.replace(".", r"\.")):
            write_shards(samples, tmp_path / "out", names, shard_size=1)
        assert sorted(os.listdir(tmp_path)) == []  # neither output nor temporary folder is left


def test_failure_midway_leaves_nothing(tmp_path: Path, small_idx: tuple) -> None:
    _, _, images, _ = small_idx

    def samples():
        for i in range(10):
            yield f"k{i}", images[i], 0
        raise NrrError("source.bin", "read error")

    with pytest.raises(NrrError, match="read error"):
        write_shards(samples(), tmp_path / "out", ["a"], shard_size=3)
    assert os.listdir(tmp_path) == []


def test_overwrite_rules(tmp_path: Path, small_idx: tuple) -> None:
    img, lab, _, _ = small_idx
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    prepare_idx(img, lab, out, limit=5)
    with pytest.raises(NrrError) as e:
        prepare_idx(img, lab, out, limit=6)
    assert "already exists" in str(e.value) and str(out) in str(e.value)
    summary = prepare_idx(img, lab, out, limit=6, overwrite=True)
    assert summary["count"] == 6 and json.loads((out / "shards.json").read_text())["count"] == 6
    assert sorted(os.listdir(tmp_path)) == ["out"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(NrrError, match="not a folder made by prepare"):
        prepare_idx(img, lab, other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NrrError, match="not a folder"):
        prepare_idx(img, lab, tmp_path / "file")


def test_stale_temporary_folder_is_replaced(tmp_path: Path, small_idx: tuple) -> None:
    img, lab, _, _ = small_idx
    stale = tmp_path / ".tmp-out"
    stale.mkdir()
    (stale / "train-000000.tar").write_bytes(b"half a shard")
    prepare_idx(img, lab, tmp_path / "out", shard_size=100)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(tmp_path / "out")) == ["classes.txt", "shards.json", "train-000000.tar"]


def test_killed_prepare_leaves_no_output(tmp_path: Path, fmnist_test_shards: Path) -> None:
    out = tmp_path / "out"
    script = textwrap.dedent("""
        import os, signal, sys
        from nrrstore.sources import iter_samples, write_shards

        def progress(task, done, total):
            if done >= 400:  # two shards of 200 are complete: die like a killed job
                os.kill(os.getpid(), signal.SIGKILL)

        samples = ((s.key, s.image, s.label) for s in iter_samples(sys.argv[1]))
        write_shards(samples, sys.argv[2], [str(i) for i in range(10)], shard_size=200, progress=progress)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, str(fmnist_test_shards), str(out)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    partial = sorted(os.listdir(tmp_path / ".tmp-out"))  # it was killed midway, with shards written
    assert "train-000000.tar" in partial and "train-000001.tar" in partial and "shards.json" not in partial
    # The next run cleans up and completes.
    samples = ((s.key, s.image, s.label) for s in iter_samples(fmnist_test_shards))
    summary = write_shards(samples, out, [str(i) for i in range(10)], shard_size=200)
    assert summary["count"] == 1000 and sorted(os.listdir(tmp_path)) == ["out"]


def test_select_and_class_arguments(tmp_path: Path, small_idx: tuple) -> None:
    img, lab, _, labels = small_idx
    s = prepare_idx(img, lab, tmp_path / "a", per_class=1, limit=3)
    keys = [x.key for x in iter_samples(tmp_path / "a")]
    assert s["count"] == 3 and [int(k.split("_")[1]) for k in keys] == first_per_class(labels, 1)[:3]
    assert read_class_names(tmp_path / "a") == [str(i) for i in range(int(labels.max()) + 1)]
    with pytest.raises(NrrError, match="only 2 class names"):
        prepare_idx(img, lab, tmp_path / "b", class_names=["x", "y"])


# ---------------------------------------------------------------- CLI


def test_cli_success_and_gzip(tmp_path: Path, small_idx: tuple) -> None:
    img, lab, images, labels = small_idx
    names = ",".join(f"c{i}" for i in range(10))
    result = run_cli("prepare", "idx", img, lab, "--out", tmp_path / "o", "--classes", names,
                     "--shard-size", 16, "--gzip", "--prefix", "val")
    assert result.exit_code == 0, result.stderr
    assert "wrote 40 images of 10 classes in 3 shards" in result.stdout
    got = read_plain(resolve_shards(tmp_path / "o"))
    assert [s["__key__"] for s in got] == [f"val_{i:07d}" for i in range(40)]
    assert all(np.array_equal(s["png"], images[i]) and s["cls"] == labels[i] for i, s in enumerate(got))
    assert read_class_names(tmp_path / "o") == names.split(",")


def test_cli_idx_errors(tmp_path: Path, small_idx: tuple) -> None:
    img, lab, _, _ = small_idx
    missing = tmp_path / "missing.gz"
    assert_cli_error(run_cli("prepare", "idx", missing, lab, "--out", tmp_path / "o"), missing, "no such file")
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert_cli_error(run_cli("prepare", "idx", corrupt, lab, "--out", tmp_path / "o"), corrupt)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(img.read_bytes()[:-500])
    assert_cli_error(run_cli("prepare", "idx", truncated, lab, "--out", tmp_path / "o"), truncated, "truncated")
    short_labels = write_idx(tmp_path / "short-labels", np.zeros(39, dtype=np.uint8))
    assert_cli_error(run_cli("prepare", "idx", img, short_labels, "--out", tmp_path / "o"), short_labels, "39 labels")
    assert_cli_error(run_cli("prepare", "idx", img, lab, "--out", tmp_path / "o", "--classes", "nolist"),
                     "nolist", "comma-separated")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_cli_error(run_cli("prepare", "idx", img, lab, "--out", tmp_path / "full"), tmp_path / "full", "not empty")
    assert not (tmp_path / "o").exists()


def _bomb_png(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(bytes(side + 1)) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_cli_imagefolder(tmp_path: Path, small_idx: tuple) -> None:
    _, _, images, labels = small_idx
    root = tmp_path / "tree"
    for i in range(6):
        (root / f"class{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"class{labels[i]}" / f"{i}.png")
    result = run_cli("prepare", "imagefolder", root, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 6 and summary["source"] == {"root": str(root)}

    assert_cli_error(run_cli("prepare", "imagefolder", tmp_path / "nope", "--out", tmp_path / "o2"),
                     tmp_path / "nope", "no such file")
    (tmp_path / "empty").mkdir()
    assert_cli_error(run_cli("prepare", "imagefolder", tmp_path / "empty", "--out", tmp_path / "o2"),
                     tmp_path / "empty", "no class folders")
    broken = root / f"class{labels[0]}" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert_cli_error(run_cli("prepare", "imagefolder", root, "--out", tmp_path / "o2"), broken)
    broken.unlink()
    bomb = root / f"class{labels[0]}" / "bomb.png"
    bomb.write_bytes(_bomb_png(9000))  # 81 Mpx: over the 64 Mpx limit
    assert_cli_error(run_cli("prepare", "imagefolder", root, "--out", tmp_path / "o2"), bomb, "decompression bomb")
    assert not (tmp_path / "o2").exists() and not (tmp_path / ".tmp-o2").exists()
