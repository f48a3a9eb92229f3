"""Input readers: shard specs, labelled shard reading, IDX files and ImageFolder trees, good and bad."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nrrstore.errors import NrrError
from nrrstore.format.images import encode_image
from nrrstore.sources import (
    iter_imagefolder,
    iter_samples,
    list_imagefolder,
    load_class_names,
    read_class_names,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
    resolve_shards,
)

FMNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- helpers


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar written with tarfile, independent of nrrstore's writer."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def real_images(fmnist_train_shards: Path, n: int) -> list[np.ndarray]:
    out = []
    for s in iter_samples(fmnist_train_shards):
        out.append(s.image)
        if len(out) == n:
            return out
    raise AssertionError("not enough images")


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-zero grey PNG whose header claims width x height; a few hundred kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    data = png_bomb(10000, 10000)  # 100 Mpx: over nrrstore's 64 Mpx limit, under Pillow's own error limit
    assert len(data) < 200_000
    return data


@pytest.fixture()
def images(fmnist_train_shards: Path) -> list[np.ndarray]:
    return real_images(fmnist_train_shards, 4)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, type_byte: int = 0x08) -> Path:
    raw = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def assert_names(exc: pytest.ExceptionInfo[NrrError], *parts: object) -> None:
    msg = str(exc.value)
    for part in parts:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    assert "\n" not in msg


# ---------------------------------------------------------------- resolve_shards


def test_resolve_directory_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b-000001.tar", "a-000000.tar.gz", "c.tgz", ".tmp-d.tar", "classes.txt", "notes.json"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.tar").mkdir()
    assert resolve_shards(tmp_path) == [str(tmp_path / n) for n in ["a-000000.tar.gz", "b-000001.tar", "c.tgz"]]


def test_resolve_brace_list_file_and_urls(tmp_path: Path, http_root) -> None:
    www, server = http_root  # URLs are checked to exist: a loopback server holds them
    for name in ("s-0.tar", "s-1.tar", "x-1.tar", "x-2.tar"):
        (www / name).write_bytes(b"x")
    for i in range(3):
        (tmp_path / f"train-{i:06d}.tar").write_bytes(b"x")
    pattern = str(tmp_path / "train-{000000..000002}.tar")
    expected = [str(tmp_path / f"train-{i:06d}.tar") for i in range(3)]
    assert resolve_shards(pattern) == expected
    sub = tmp_path / "lists"
    sub.mkdir()
    listing = sub / "shards.txt"
    listing.write_text("# the training shards\n../train-000002.tar\n\n  ../train-{000000..000001}.tar  \n"
                       f"pipe:cat /dev/null\n{server.url}/s-{{0..1}}.tar\n")
    assert resolve_shards(listing) == [str(sub / "../train-000002.tar"), str(sub / "../train-000000.tar"),
                                       str(sub / "../train-000001.tar"), "pipe:cat /dev/null",
                                       f"{server.url}/s-0.tar", f"{server.url}/s-1.tar"]
    # A list of specs, and a single file.
    assert resolve_shards([expected[1], tmp_path / "train-000000.tar"]) == [expected[1], expected[0]]
    assert resolve_shards(f"{server.url}/x-{{1..2}}.tar") == [f"{server.url}/x-1.tar", f"{server.url}/x-2.tar"]


def test_resolve_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(NrrError) as e:
        resolve_shards(tmp_path / "nope")
    assert_names(e, tmp_path / "nope", "no such file or directory")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NrrError) as e:
        resolve_shards(tmp_path / "empty")
    assert_names(e, tmp_path / "empty", "no .tar shards found")
    (tmp_path / "s-0.tar").write_bytes(b"x")
    with pytest.raises(NrrError) as e:
        resolve_shards(str(tmp_path / "s-{0..3}.tar"))
    assert_names(e, tmp_path / "s-1.tar", "no such file")
    listing = tmp_path / "list.txt"
    listing.write_text("s-0.tar\nmissing.tar\n")
    with pytest.raises(NrrError) as e:
        resolve_shards(listing)
    assert_names(e, tmp_path / "missing.tar", listing)
    listing.write_text("# nothing\n\n")
    with pytest.raises(NrrError) as e:
        resolve_shards(listing)
    assert_names(e, listing, "names no shards")
    with pytest.raises(NrrError) as e:
        resolve_shards(str(tmp_path / "s-{0..3.tar"))
    assert_names(e, "s-{0..3.tar", "unbalanced braces")
    with pytest.raises(NrrError):
        resolve_shards([])


# ---------------------------------------------------------------- iter_samples on real shards


def test_committed_subset_reads(fmnist_train_shards: Path, fmnist_test_shards: Path) -> None:
    names = read_class_names(fmnist_train_shards)
    assert names == FMNIST_NAMES
    counts = np.zeros(10, dtype=int)
    keys = []
    for s in iter_samples(fmnist_train_shards, class_names=names):
        assert s.image.shape == (28, 28) and s.image.dtype == np.uint8
        assert s.shard.endswith(".tar.gz")
        counts[s.label] += 1
        keys.append(s.key)
    assert counts.tolist() == [300] * 10
    assert keys == sorted(keys) and len(set(keys)) == 3000
    assert sum(1 for _ in iter_samples(fmnist_test_shards, num_classes=10)) == 1000


def test_progress_and_pipe(fmnist_test_shards: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    shard = resolve_shards(fmnist_test_shards)[0]
    direct = list(iter_samples(shard, progress=lambda *a: calls.append(a)))
    assert calls == [("read shards", 1, 1)]
    piped = list(iter_samples(f"pipe:cat {shard}"))
    assert [s.key for s in piped] == [s.key for s in direct]
    assert all(np.array_equal(a.image, b.image) and a.label == b.label for a, b in zip(piped, direct, strict=True))
    with pytest.raises(NrrError) as e:
        list(iter_samples(f"pipe:cat {shard}.missing"))
    assert_names(e, "pipe:cat", "exited with status 1")


def test_labels_from_json_and_rgb(tmp_path: Path, images: list[np.ndarray]) -> None:
    rgb = np.stack([images[0], images[1], images[2]], axis=2)
    shard = write_tar(tmp_path / "s.tar", [
        ("a.jpg", encode_image(rgb, "jpg")), ("a.json", b'{"label": 3, "src": "x"}'),
        ("b.webp", encode_image(images[1], "webp")), ("b.json", b'{"cls": 1}'),
        ("c.png", encode_image(rgb)), ("c.cls", b" 2\n"),
    ])
    got = list(iter_samples(shard, num_classes=4))
    assert [(s.key, s.label) for s in got] == [("a", 3), ("b", 1), ("c", 2)]
    assert got[0].image.shape == (28, 28, 3) and got[0].meta == {"label": 3, "src": "x"}
    # WebP has no grey mode: a grey image comes back as three equal channels.
    assert got[1].image.shape == (28, 28, 3) and all(np.array_equal(got[1].image[:, :, c], images[1]) for c in range(3))
    assert np.array_equal(got[2].image, rgb)


# ---------------------------------------------------------------- iter_samples on bad shards


def test_corrupt_tar(tmp_path: Path) -> None:
    bad = tmp_path / "random.tar"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(NrrError) as e:
        list(iter_samples(bad))
    assert_names(e, bad)


@pytest.mark.parametrize("cut", ["mid-member", "header-boundary", "gzip"])
def test_truncated_tar(tmp_path: Path, images: list[np.ndarray], fmnist_test_shards: Path, cut: str) -> None:
    if cut == "gzip":
        src = resolve_shards(fmnist_test_shards)[0]
        data = Path(src).read_bytes()
        bad = tmp_path / "cut.tar.gz"
        bad.write_bytes(data[: len(data) // 2])
    else:
        full = write_tar(tmp_path / "full.tar", [(f"k{i}.png", encode_image(im)) for i, im in enumerate(images)]
                         + [(f"k{i}.cls", b"1") for i in range(4)])
        data = full.read_bytes()
        # Members: k0.png k1.png k2.png k3.png k0.cls ...; each png spans header + 2 blocks or fewer.
        end_of_first = 512 + -(-len(encode_image(images[0])) // 512) * 512
        size = end_of_first + 300 if cut == "mid-member" else end_of_first
        bad = tmp_path / "cut.tar"
        bad.write_bytes(data[:size])
    with pytest.raises(NrrError) as e:
        list(iter_samples(bad))
    assert_names(e, bad, "truncated")


def test_member_not_an_image(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "s.tar", [("a.png", b"this is text, not a png"), ("a.cls", b"0")])
    with pytest.raises(NrrError) as e:
        list(iter_samples(shard))
    assert_names(e, shard, "a.png", "not a decodable image")


def test_decompression_bomb(tmp_path: Path, bomb_png: bytes) -> None:
    shard = write_tar(tmp_path / "bomb.tar", [("a.png", bomb_png), ("a.cls", b"0")])
    with pytest.raises(NrrError) as e:
        list(iter_samples(shard))
    assert_names(e, shard, "a.png", "10000x10000", "decompression bomb")


def test_no_image_member(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "s.tar", [("a.txt", b"hello"), ("a.cls", b"0")])
    with pytest.raises(NrrError) as e:
        list(iter_samples(shard))
    assert_names(e, shard, "'a'", "no image member")


@pytest.mark.parametrize(
    ("label_member", "problem"),
    [
        (None, "has no label"),
        (("a.cls", b"three"), "not an integer"),
        (("a.cls", b"1.5"), "not an integer"),
        (("a.json", b'{"label": "3"}'), "not an integer"),
        (("a.json", b'{"other": 1}'), "has no label"),
        (("a.json", b"{broken"), "not valid JSON"),
        (("a.cls", b"10"), "outside the class range [0, 10)"),
        (("a.cls", b"-1"), "outside the class range [0, 10)"),
    ],
)
def test_bad_labels(tmp_path: Path, images: list[np.ndarray], label_member: tuple[str, bytes] | None, problem: str) -> None:
    members = [("a.png", encode_image(images[0]))] + ([label_member] if label_member else [])
    shard = write_tar(tmp_path / "s.tar", members)
    with pytest.raises(NrrError) as e:
        list(iter_samples(shard, class_names=FMNIST_NAMES))
    assert_names(e, shard, "'a'", problem)


def test_duplicate_key(tmp_path: Path, images: list[np.ndarray]) -> None:
    png = encode_image(images[0])
    shard = write_tar(tmp_path / "dup.tar", [("a.png", png), ("a.cls", b"0"), ("b.png", png), ("b.cls", b"1"),
                                             ("a.png", png), ("a.cls", b"0")])
    with pytest.raises(NrrError) as e:
        list(iter_samples(shard))
    assert_names(e, shard, "duplicate key 'a'")


# ---------------------------------------------------------------- class names


def test_class_name_files(tmp_path: Path) -> None:
    (tmp_path / "s.tar").write_bytes(b"x")
    assert read_class_names(tmp_path) is None
    (tmp_path / "classes.json").write_text('{"classes": ["cat", "dog"]}')
    assert read_class_names(tmp_path / "s.tar") == ["cat", "dog"]
    (tmp_path / "classes.txt").write_text("ant\nbee\n\n")
    assert read_class_names(tmp_path) == ["ant", "bee"]  # classes.txt wins
    bad = tmp_path / "bad.txt"
    bad.write_text("ant\n\nbee\n")
    with pytest.raises(NrrError) as e:
        load_class_names(bad)
    assert_names(e, bad, "class 1 has an empty name")
    bad.write_text("ant\nant\n")
    with pytest.raises(NrrError) as e:
        load_class_names(bad)
    assert_names(e, bad, "appears twice")
    badj = tmp_path / "bad.json"
    badj.write_text('{"names": 3}')
    with pytest.raises(NrrError) as e:
        load_class_names(badj)
    assert_names(e, badj, "expected a list")


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, images: list[np.ndarray], gz: bool) -> None:
    imgs = np.stack(images)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    ip = write_idx(tmp_path / "img.idx", imgs, gz)
    lp = write_idx(tmp_path / "lab.idx", labels, gz)
    got_i, got_l = read_idx_pair(ip, lp)
    assert np.array_equal(got_i, imgs) and got_i.flags.writeable
    assert got_l.dtype == np.int64 and got_l.tolist() == [3, 1, 4, 1]
    floats = np.arange(6, dtype=">f4").reshape(2, 3)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.idx", floats, gz, 0x0D)), floats.astype(np.float32))


def test_idx_errors(tmp_path: Path, images: list[np.ndarray]) -> None:
    imgs = np.stack(images)
    good = write_idx(tmp_path / "img.idx", imgs).read_bytes()
    cases = {
        "magic.idx": (b"\x12\x34" + good[2:], "bad magic"),
        "empty.idx": (b"", "bad magic"),
        "short.idx": (good[:-10], "truncated"),
        "header.idx": (good[:9], "truncated IDX header"),
        "extra.idx": (good + b"\0", "unexpected bytes"),
        "cut.idx.gz": (gzip.compress(good)[:-30], "truncated"),
    }
    for name, (data, problem) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(NrrError) as e:
            read_idx(p)
        assert_names(e, p, problem)
    labels = write_idx(tmp_path / "lab.idx", np.zeros(3, dtype=np.uint8))
    with pytest.raises(NrrError) as e:
        read_idx_pair(tmp_path / "img.idx", labels)
    assert_names(e, labels, "3 labels", "4 images")
    with pytest.raises(NrrError) as e:
        read_idx_images(labels)
    assert_names(e, labels, "expected IDX images")
    with pytest.raises(NrrError) as e:
        read_idx_labels(tmp_path / "img.idx")
    assert_names(e, "img.idx", "expected IDX labels")
    with pytest.raises(NrrError) as e:
        read_idx(tmp_path / "missing.idx")
    assert_names(e, "missing.idx", "no such file")


def test_idx_forged_huge_header(tmp_path: Path) -> None:
    p = tmp_path / "huge.idx"
    p.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 31, 1 << 16, 1 << 16) + b"\0" * 100)
    with pytest.raises(NrrError) as e:
        read_idx(p)
    assert_names(e, p, "truncated")


def test_fmnist_idx_headers(fmnist_idx: dict[str, Path]) -> None:
    labels = read_idx_labels(fmnist_idx["test_labels"])
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- ImageFolder


def make_folder(root: Path, images: list[np.ndarray]) -> None:
    (root / "b_dog").mkdir(parents=True)
    (root / "a_cat" / "nested").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(images[0]).save(root / "a_cat" / "z.png")
    Image.fromarray(images[1]).save(root / "a_cat" / "nested" / "y.PNG")
    Image.fromarray(images[2]).save(root / "b_dog" / "x.png")
    Image.fromarray(images[3]).save(root / ".hidden" / "w.png")
    (root / "a_cat" / "notes.txt").write_text("not an image, skipped")
    (root / "README").write_text("a file at the root, ignored")


def test_imagefolder_order_and_labels(tmp_path: Path, images: list[np.ndarray]) -> None:
    make_folder(tmp_path, images)
    classes, entries = list_imagefolder(tmp_path)
    assert classes == ["a_cat", "b_dog"]
    rel = [(e.path.relative_to(tmp_path).as_posix(), e.label) for e in entries]
    assert rel == [("a_cat/z.png", 0), ("a_cat/nested/y.PNG", 0), ("b_dog/x.png", 1)]  # torchvision's order
    got = list(iter_imagefolder(tmp_path))
    assert [lab for _, _, lab in got] == [0, 0, 1]
    assert all(np.array_equal(got[i][1], images[j]) for i, j in [(0, 0), (1, 1), (2, 2)])


def test_imagefolder_errors(tmp_path: Path, images: list[np.ndarray], bomb_png: bytes) -> None:
    with pytest.raises(NrrError) as e:
        list_imagefolder(tmp_path / "missing")
    assert_names(e, tmp_path / "missing", "no such file")
    with pytest.raises(NrrError) as e:
        list_imagefolder(tmp_path)
    assert_names(e, tmp_path, "no class folders")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.txt").write_text("x")
    with pytest.raises(NrrError) as e:
        list_imagefolder(tmp_path)
    assert_names(e, tmp_path / "cls", "no image files")
    Image.fromarray(images[0]).save(tmp_path / "cls" / "good.png")
    broken = tmp_path / "cls" / "broken.jpg"
    broken.write_bytes(encode_image(images[0], "jpg")[:40])
    with pytest.raises(NrrError) as e:
        list(iter_imagefolder(tmp_path))
    assert_names(e, broken)
    broken.unlink()
    bomb = tmp_path / "cls" / "bomb.png"
    bomb.write_bytes(bomb_png)
    with pytest.raises(NrrError) as e:
        list(iter_imagefolder(tmp_path))
    assert_names(e, bomb, "decompression bomb")
    os.remove(bomb)
    assert len(list(iter_imagefolder(tmp_path))) == 1


def test_want_skips_samples_before_decoding(tmp_path: Path) -> None:
    from nrrstore.format.tario import TarShardWriter

    good = np.zeros((4, 4), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, format="PNG")
    with TarShardWriter(tmp_path / "s-000000.tar") as w:
        w.add("a", {"png": buf.getvalue(), "cls": b"0"})
        w.add("b", {"png": b"not an image at all", "cls": b"1"})  # would fail if decoded
        w.add("c", {"png": buf.getvalue(), "cls": b"0"})
    got = [s.key for s in iter_samples(tmp_path, want=lambda c: c == 0)]
    assert got == ["a", "c"]
    with pytest.raises(NrrError, match="b.png"):
        list(iter_samples(tmp_path))
