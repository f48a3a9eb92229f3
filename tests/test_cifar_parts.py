"""CIFAR-10 recipe pieces on real natural images: per-class parts, JPEG bytes kept, crop-pad batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from nrrstore.errors import NrrError
from nrrstore.sources import iter_samples, prepare_idx, prepare_imagefolder, resolve_shards
from nrrstore.sources.batches import estimate_normalization, shard_batches
from nrrstore.sources.prepare import select_indices
from nrrstore.train.teacher_job import train_teacher
from nrrstore_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MINI = ROOT / "data" / "cifar10-mini"


def _files() -> list[Path]:
    return [p for c in sorted(d.name for d in CIFAR_MINI.iterdir()) for p in sorted((CIFAR_MINI / c).iterdir())]


def test_per_class_parts_are_disjoint_balanced_and_cover_everything() -> None:
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0, 1, 2], dtype=np.int64)
    train = select_indices(labels, per_class=2)
    val = select_indices(labels, per_class=1, skip_per_class=2)
    test = select_indices(labels, skip_per_class=3)
    assert train.tolist() == [0, 1, 2, 3, 4, 6]  # first two of each class, file order
    assert val.tolist() == [5, 7, 8] and test.tolist() == [9, 10, 11]
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(12))
    with pytest.raises(NrrError, match="leaves none"):
        select_indices(labels, skip_per_class=4)


def test_parts_from_each_class_end_are_equal_for_unequal_classes() -> None:
    # Class 0 has 5 images, class 1 has 3 (Imagenette's classes hold 858 to 993): the held-out parts come
    # from each class's end, so they are equal in size and the train part takes what is left.
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0], dtype=np.int64)
    test = select_indices(labels, last_per_class=1)
    val = select_indices(labels, drop_last_per_class=1, last_per_class=1)
    train = select_indices(labels, drop_last_per_class=2)
    assert test.tolist() == [6, 7] and val.tolist() == [4, 5] and train.tolist() == [0, 1, 2, 3]
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(8))
    assert select_indices(labels, drop_last_per_class=2, per_class=1).tolist() == [0, 1]  # then the usual rules
    with pytest.raises(NrrError, match="leaves none"):
        select_indices(labels, drop_last_per_class=5)


def test_cifar_parts_from_the_cli_keep_jpeg_bytes(tmp_path: Path) -> None:
    runner = CliRunner()
    parts = {"train": ["--per-class", "8"], "val": ["--skip-per-class", "8", "--per-class", "2"],
             "test": ["--skip-per-class", "10"]}
    keys: dict[str, set[str]] = {}
    for name, opts in parts.items():
        r = runner.invoke(app, ["prepare", "imagefolder", str(CIFAR_MINI), "--out", str(tmp_path / name),
                                "--format", "source", "--prefix", name, "--shard-size", "25", "--json", *opts])
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["per_class"] == [{"train": 8, "val": 2, "test": 2}[name]] * 10
        keys[name] = {s.key.split("_")[1] for s in iter_samples(tmp_path / name)}
    assert not (keys["train"] & keys["val"]) and not (keys["val"] & keys["test"]) and not (keys["train"] & keys["test"])
    assert len(keys["train"] | keys["val"] | keys["test"]) == 120
    # Plain webdataset sees each JPEG file's own bytes: no second lossy encode, no PNG.
    files = _files()
    for s in wds.WebDataset(resolve_shards(tmp_path / "val"), shardshuffle=False, empty_check=False):
        assert set(s) >= {"jpg", "cls"} and "png" not in s
        assert s["jpg"] == files[int(s["__key__"].split("_")[1])].read_bytes()
    # nrrstore decodes them to exactly what Pillow gives for the files.
    for s in iter_samples(tmp_path / "test"):
        assert np.array_equal(s.image, np.asarray(Image.open(files[int(s.key.split("_")[1])])))


def test_source_format_is_deterministic_and_refuses_what_it_cannot_keep(tmp_path: Path) -> None:
    a = prepare_imagefolder(CIFAR_MINI, tmp_path / "a", image_format="source", per_class=3)
    b = prepare_imagefolder(CIFAR_MINI, tmp_path / "b", image_format="source", per_class=3)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    png = prepare_imagefolder(CIFAR_MINI, tmp_path / "png", per_class=3)
    assert a["bytes"] < png["bytes"]
    # A pass-through: --mode and --resize that change nothing keep the files' bytes...
    same = prepare_imagefolder(CIFAR_MINI, tmp_path / "same", image_format="source", per_class=3, mode="RGB", resize=32)
    assert [s["sha256"] for s in same["shards"]] == [s["sha256"] for s in a["shards"]]
    # ...and ones that change the pixels encode them once, in the file's own format (JPEG here).
    prepare_imagefolder(CIFAR_MINI, tmp_path / "c", image_format="source", per_class=3, resize=16)
    assert {s.image.shape for s in iter_samples(tmp_path / "c")} == {(16, 16, 3)}
    assert all(name.endswith(".jpg") for name in _member_names(tmp_path / "c"))
    with pytest.raises(NrrError, match="IDX files hold raw pixels"):
        prepare_idx(np.zeros((2, 4, 4), np.uint8), np.zeros(2), tmp_path / "d", image_format="source")
    # A file that cannot be kept as it is (a palette PNG) is named, and nothing is left behind.
    tree = tmp_path / "tree" / "cls"
    tree.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(tree / "p.png")
    with pytest.raises(NrrError, match="not an 8-bit grey or RGB"):
        prepare_imagefolder(tmp_path / "tree", tmp_path / "e", image_format="source")
    assert not (tmp_path / "e").exists()


def test_crop_pad_batches_are_padded_windows_and_seeded(tmp_path: Path) -> None:
    prepare_imagefolder(CIFAR_MINI, tmp_path / "s", image_format="source", per_class=2)
    plain = [s.image for s in iter_samples(tmp_path / "s")]
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    batches = list(shard_batches(tmp_path / "s", 20, mean, std, shuffle=False, crop_pad=4, seed=3))
    again = list(shard_batches(tmp_path / "s", 20, mean, std, shuffle=False, crop_pad=4, seed=3))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(batches, again, strict=True))
    x = torch.cat([b[0] for b in batches])
    moved = 0
    for img, view in zip(plain, x, strict=True):
        padded = torch.nn.functional.pad(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, (4, 4, 4, 4))
        hits = [(t, left) for t in range(9) for left in range(9) if torch.equal(padded[:, t:t + 32, left:left + 32], view)]
        assert hits, "each view is a 32x32 window of the image padded by 4 black pixels"
        moved += (4, 4) not in hits
    assert moved > len(plain) // 2
    with pytest.raises(NrrError, match="crop padding"):
        next(shard_batches(tmp_path / "s", 4, mean, std, crop_pad=-1))
    with pytest.raises(NrrError, match="--crop-pad"):
        train_teacher(tmp_path / "s", "convnet3", tmp_path / "t.pt", crop_pad=32)
    assert not (tmp_path / "t.pt").exists()


def test_normalization_is_estimated_over_every_class_of_a_class_ordered_source(tmp_path: Path) -> None:
    """A teacher's mean and std come from images spread over the whole source: the first ones of a class-ordered
    source (CIFAR-10's parts are) would be one or two classes."""
    prepare_imagefolder(CIFAR_MINI, tmp_path / "s", image_format="source")  # 12 per class, in class order
    samples = list(iter_samples(tmp_path / "s"))
    chosen = samples[::12]  # limit 10 of 120: every 12th, the first image of each class
    assert sorted(s.label for s in chosen) == list(range(10))
    pixels = np.concatenate([s.image.reshape(-1, 3) / 255.0 for s in chosen])
    got = estimate_normalization(tmp_path / "s", limit=10)
    assert got["mean"] == pytest.approx(pixels.mean(0).tolist(), abs=1e-6)
    assert got["std"] == pytest.approx(pixels.std(0).tolist(), abs=1e-6)
    every = estimate_normalization(tmp_path / "s", limit=1000)  # the limit above the count: all of them
    everything = np.concatenate([s.image.reshape(-1, 3) / 255.0 for s in samples])
    assert every["mean"] == pytest.approx(everything.mean(0).tolist(), abs=1e-6)


def _member_names(folder: Path) -> list[str]:
    import tarfile

    names: list[str] = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += [m.name for m in tar.getmembers() if not m.name.endswith(".cls")]
    return names
