"""The reliability table: bad inputs for every command, and what the refusal must name.

Each `Case` builds its bad input inside a fresh work folder (``w``) from shared, read-only inputs
(`Inputs`, ``e``), runs one command line, and names the substrings the single stderr line must hold
(the file or option at fault). `run_case` runs a case and measures what the issue counts: the exit
code, stderr lines, tracebacks, files left behind and files changed or lost. ``python -m
tests._bad_inputs`` prints those counts for the whole table (recorded in README.md, RELIABILITY).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from typer.testing import CliRunner

from nrrstore.format.atomic import file_sha256
from nrrstore.format.manifest import DIGEST_KEY, manifest_digest
from nrrstore.format.writer import StoreWriter
from nrrstore.labels.relabel import relabel
from nrrstore.limits import MAX_WORKERS
from nrrstore.models import load_teacher
from nrrstore.sources import prepare_idx, prepare_imagefolder
from nrrstore_cli.main import app
from tests._builders import make_fixture, write_fmnist_store
from tests._real import FMNIST_TEST, fmnist, photo_crops
from tests._teacher import teacher_path

Args = Callable[[Any, Path, SimpleNamespace], list[Any]]


@dataclass
class Inputs:
    """Shared inputs, built once; cases copy what they damage into their own work folder."""

    root: Path
    teacher: Path
    shards: Path  # the embedded Fashion-MNIST test split (1000 images, 10 classes)
    small_shards: Path  # 4 images per class
    store: Path  # 10 classes x 2 images, 2 epochs of DBR distances
    plain: Path  # 10 classes x 1 image, no labels
    store3: Path  # 3 classes
    idx_images: Path
    idx_labels: Path
    rgb_shards: Path  # 3 classes of RGB photo crops, 28 px
    folder: Path  # an ImageFolder tree: 3 classes x 2 Fashion-MNIST PNGs
    sre2l: SimpleNamespace  # labels (made by the teacher) and images
    rded: Path  # an RDED tree: classes 0..2, RGB JPEGs of grey images (as RDED writes them)
    evil: Path  # a pickle that would run os.system


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint does
        return (os.system, ("echo pwned",))


def build_inputs(root: Path) -> Inputs:
    root.mkdir(parents=True, exist_ok=True)
    teacher = teacher_path()
    t = load_teacher(teacher)
    store = root / "store"
    write_fmnist_store(store, per_class=2)
    relabel(store, t, 2, batch_size=20)
    plain = root / "plain"
    write_fmnist_store(plain, per_class=1)
    store3 = root / "store3"
    with StoreWriter(store3, ["a", "b", "c"]) as w:
        for key, img, label in fmnist("train", 1):
            if label < 3:
                w.add_image(key, img, label)
        w.finalize()
    samples = fmnist("test", 4)
    idx_images = write_idx(root / "t10k-images-idx3-ubyte.gz", np.stack([s[1] for s in samples]))
    idx_labels = write_idx(root / "t10k-labels-idx1-ubyte.gz", np.array([s[2] for s in samples], np.uint8))
    photos = root / "photos"
    for i, (img, label) in enumerate(photo_crops(9, size=28)):
        (photos / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(photos / f"c{label}" / f"{i:03d}.png")
    rgb_shards = root / "rgb-shards"
    prepare_imagefolder(photos, rgb_shards)
    folder = root / "folder"
    for key, img, label in fmnist("train", 2)[:6]:
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"class{label}" / f"{key}.png")
    fx = make_fixture(root / "sre2l", ["cutmix", "cutmix"], per_class=2, batch=8, teacher=t)
    rded = root / "rded"
    for c in range(3):
        (rded / f"{c:05d}").mkdir(parents=True)
        for i, (_, img, _) in enumerate([s for s in fmnist("train", 2) if s[2] == c]):
            Image.fromarray(img).convert("RGB").save(rded / f"{c:05d}" / f"class{c:05d}_id{i:05d}.jpg")
    evil = root / "evil.pt"
    torch.save({"state_dict": _Payload()}, evil)
    small_shards = root / "small"
    prepare_idx(idx_images, idx_labels, small_shards)
    return Inputs(root, teacher, FMNIST_TEST, small_shards, store, plain, store3, idx_images, idx_labels, rgb_shards, folder,
                  SimpleNamespace(labels=fx.labels_dir, images=fx.images_dir), rded, evil)


# -- bad inputs, made in the work folder ---------------------------------------------------------------
def copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def text(path: Path, content: str = "not what it should be\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def edit_manifest(store: Path, change: Callable[[dict], None], redigest: bool) -> None:
    doc = json.loads((store / "manifest.json").read_text())
    change(doc)
    if redigest:
        doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))


def label_42(store: Path) -> str:
    """Index label 42, with the file checksum and the digest made to match: only a range check finds it."""
    index = pq.read_table(store / "index.parquet")
    labels = index.column("label").to_pylist()
    labels[3] = 42
    i = index.schema.get_field_index("label")
    pq.write_table(index.set_column(i, index.schema.field("label"), pa.array(labels, pa.int32())), store / "index.parquet")

    def fix(doc: dict) -> None:
        entry = next(f for f in doc["files"] if f["path"] == "index.parquet")
        entry["bytes"] = (store / "index.parquet").stat().st_size
        entry["sha256"] = file_sha256(store / "index.parquet")

    edit_manifest(store, fix, redigest=True)
    return index.column("key")[3].as_py()


def hold_lock(target: Path, x: SimpleNamespace) -> None:
    """Another live process holding the write lock of ``target`` (its pid goes into ``x.pid``)."""
    code = ("import sys, time\nfrom nrrstore.format.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"

    def finalize() -> None:
        proc.kill()
        proc.wait()

    x.pid, x.finalize = proc.pid, finalize


def locked_link(link: Path, target: Path, x: SimpleNamespace) -> None:
    """``link``, a symlink to ``target``, whose write lock another live process holds (``target`` must exist:
    a dangling link cannot be snapshot)."""
    hold_lock(target, x)
    link.symlink_to(target)


def damage_distances(store: Path, column: str, value: float) -> Path:
    """Set every value of ``column`` in the first distance file to ``value`` (one row group per epoch, as relabel
    writes it), with its size, checksum and the manifest digest made to match; returns the file."""
    doc = json.loads((store / "manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["kind"] == "distances")
    path = store / entry["path"]
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(np.full(table.num_rows, value, np.float16)))
    pq.write_table(table, path, row_group_size=doc["dataset"]["num_images"], store_schema=False)
    entry["bytes"], entry["sha256"] = path.stat().st_size, file_sha256(path)
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))
    return path


def disagreeing_shards(e: Inputs, dst: Path) -> Path:
    """The small shards under Fashion-MNIST's class names, their first sample labelled once more in a ``.json``
    member that contradicts its ``.cls``; returns the damaged shard."""
    copy(e.small_shards, dst)
    copy(e.shards / "classes.txt", dst / "classes.txt")
    shard = dst / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    first = next(m for m, _ in members if m.name.endswith(".cls"))
    label = int(next(d for m, d in members if m is first))
    meta = json.dumps({"label": (label + 1) % 10}).encode()
    extra = tarfile.TarInfo(first.name[:-4] + ".json")
    extra.size = len(meta)
    members.insert(1 + [m for m, _ in members].index(first), (extra, meta))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    return shard


def _loud_classifier(ckpt: dict) -> None:
    """Logits a million times larger: cross-entropies of ~1e6, finite in fp32, infinite in fp16."""
    ckpt["state_dict"]["classifier.weight"] *= 1e6
    ckpt["state_dict"]["classifier.bias"] *= 1e6


def _nan_classifier(ckpt: dict) -> None:
    ckpt["state_dict"]["classifier.weight"][0, 0] = float("nan")


def _escape_distances(doc: dict) -> None:
    doc["labels"]["distances"]["files"][0]["path"] = "../other/labels/distances-e0000-e0001.parquet"


def _downgrade(doc: dict) -> None:
    doc.pop(DIGEST_KEY)
    doc["format_version"] = "1.0"


def _on_store(cmd: list[str]) -> Args:
    """``cmd`` run on the case's copied store ``w/s`` (with the shared held-out shards for students)."""
    return lambda e, w, x: [cmd[0], w / "s", *(["--val", e.shards] if cmd[0] == "train-student" else []), *cmd[1:]]


def _evaluate_labels(value: str) -> Args:
    return lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--labels", value, "--work", w / "ev"]


def fullwidth_label(e: Inputs, dst: Path) -> Path:
    """The small shards with the first ``.cls`` written in a fullwidth digit (Python's int() reads it)."""
    copy(e.small_shards, dst)
    shard = dst / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    i = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".cls"))
    data = "\uff13".encode()
    members[i][0].size = len(data)
    members[i] = (members[i][0], data)
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            tar.addfile(m, io.BytesIO(payload))
    return shard


def edited_teacher(e: Inputs, dst: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the teacher checkpoint with ``change`` applied to its dict."""
    obj = torch.load(e.teacher, map_location="cpu", weights_only=True)
    change(obj)
    torch.save(obj, dst)
    return dst


def truncated(src: Path, dst: Path) -> Path:
    """The first half of ``src``: a download or copy cut short."""
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def read_only_folder(folder: Path, x: SimpleNamespace) -> None:
    """An empty folder nothing can be written into: mode 0555, or as root (who ignores permissions) a read-only
    tmpfs; the case is skipped where root cannot mount one."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        x.finalize = lambda: folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)], check=False,
                      capture_output=True).returncode:
        import pytest

        pytest.skip("root ignores folder permissions, and no read-only tmpfs can be mounted here")
    x.finalize = lambda: subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def mixed_sizes(e: Inputs, w: Path, x: SimpleNamespace) -> None:
    (w / "in/a").mkdir(parents=True)
    (w / "in/b").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w / "in/a/1.png")
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(w / "in/b/2.png")


def mixed_channels(e: Inputs, w: Path, x: SimpleNamespace) -> None:
    """Shards of grey and RGB images (prepare keeps each image's mode by default)."""
    for i, mode in enumerate(("L", "RGB")):
        (w / f"in/{mode}").mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 9 * i, np.uint8)).convert(mode).save(w / f"in/{mode}/{i}.png")
    prepare_imagefolder(w / "in", w / "sh")


def non_utf8_folder(e: Inputs, w: Path, x: SimpleNamespace) -> None:
    bad = os.fsdecode(b"caf\xe9")  # a Latin-1 name: not UTF-8
    (w / "in" / bad).mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w / "in" / bad / "1.png")


def partial_sre2l(e: Inputs, w: Path, x: SimpleNamespace) -> None:
    copy(e.sre2l.labels, w / "labels")
    (w / "labels/epoch_1/batch_2.tar").unlink()


# -- the table -------------------------------------------------------------------------------------------
Setup = Callable[[Inputs, Path, SimpleNamespace], object]  # its return value is ignored


@dataclass
class Case:
    id: str
    args: Args
    names: Callable[[Any, Path, SimpleNamespace], list[Any]]
    code: int = 1
    setup: Setup | None = None


def c(id: str, args: Args, names: Any, code: int = 1, setup: Any = None) -> Case:
    if callable(names):
        return Case(id, args, names, code, setup)
    return Case(id, args, lambda e, w, x: names, code, setup)  # a fixed list of names


def steps(*setups: Setup) -> Setup:
    """One setup that runs ``setups`` in order (a lambda holds no statements)."""
    def run(e: Inputs, w: Path, x: SimpleNamespace) -> None:
        for setup in setups:
            setup(e, w, x)
    return run


def _undigested(version: str) -> Setup:
    """A copy of the labelled store whose manifest was edited (the augmentation seed) and its digest dropped,
    declaring format ``version``."""
    def change(doc: dict) -> None:
        doc["augmentation"]["seed"] = 9
        doc["format_version"] = version
        del doc[DIGEST_KEY]
    return steps(lambda e, w, x: copy(e.store, w / "s"), lambda e, w, x: edit_manifest(w / "s", change, redigest=False))


def _rded_ten(e: Inputs, root: Path) -> Path:
    """An RDED tree of all ten classes (one grey image each, saved as RGB JPEG like RDED does)."""
    for _, img, label in fmnist("train", 1):
        (root / f"{label:05d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("RGB").save(root / f"{label:05d}" / f"class{label:05d}_id00000.jpg")
    return root


IN = "--in"
CASES: list[Case] = [
    # prepare idx
    c("idx-missing-images", lambda e, w, x: ["prepare", "idx", w / "no.gz", e.idx_labels, "--out", w / "o"],
      lambda e, w, x: [w / "no.gz", "no such file"]),
    c("idx-missing-labels", lambda e, w, x: ["prepare", "idx", e.idx_images, w / "no.gz", "--out", w / "o"],
      lambda e, w, x: [w / "no.gz"]),
    c("idx-corrupt-gzip", lambda e, w, x: ["prepare", "idx", w / "c.gz", e.idx_labels, "--out", w / "o"],
      lambda e, w, x: [w / "c.gz"], setup=lambda e, w, x: (w / "c.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))),
    c("idx-not-idx", lambda e, w, x: ["prepare", "idx", w / "t.idx", e.idx_labels, "--out", w / "o"],
      lambda e, w, x: [w / "t.idx", "not an IDX file"], setup=lambda e, w, x: text(w / "t.idx")),
    c("idx-label-count", lambda e, w, x: ["prepare", "idx", e.idx_images, w / "l.gz", "--out", w / "o"],
      lambda e, w, x: [w / "l.gz", "39 labels"], setup=lambda e, w, x: write_idx(w / "l.gz", np.zeros(39, np.uint8))),
    c("idx-out-not-empty", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o"],
      lambda e, w, x: [w / "o", "--overwrite"], setup=lambda e, w, x: text(w / "o/mine.txt")),
    c("idx-out-foreign-overwrite", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o",
                                                    "--overwrite"],
      lambda e, w, x: [w / "o", "not a folder made by prepare"], setup=lambda e, w, x: text(w / "o/mine.txt")),
    c("idx-out-is-file", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "f"],
      lambda e, w, x: [w / "f", "not a folder"], setup=lambda e, w, x: text(w / "f")),
    c("idx-missing-parent", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "no/o"],
      lambda e, w, x: [w / "no/o", "parent folder"]),
    c("idx-bad-format", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o", "--format",
                                         "gif"], ["--format", "gif"], code=2),
    c("idx-bad-mode", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o", "--mode", "CMYK"],
      ["--mode", "CMYK"], code=2),
    c("idx-bad-prefix", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o", "--prefix",
                                         "a.b"], ["prefix", "dot"]),
    c("idx-few-class-names", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o",
                                              "--classes", "a,b"], lambda e, w, x: [e.idx_labels, "class names"]),
    c("idx-skip-all", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o", "--skip", 1000],
      ["skipping 1000"]),
    c("idx-shard-size-0", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o",
                                           "--shard-size", 0], ["--shard-size"], code=2),
    # prepare imagefolder
    c("if-missing-root", lambda e, w, x: ["prepare", "imagefolder", w / "no", "--out", w / "o"],
      lambda e, w, x: [w / "no", "no such file"]),
    c("if-root-is-file", lambda e, w, x: ["prepare", "imagefolder", w / "f", "--out", w / "o"],
      lambda e, w, x: [w / "f", "not a directory"], setup=lambda e, w, x: text(w / "f")),
    c("if-no-class-folders", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "o"],
      lambda e, w, x: [w / "in", "no class folders"], setup=lambda e, w, x: (w / "in").mkdir()),
    c("if-empty-class", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "o"],
      lambda e, w, x: [w / "in/a", "no image files"], setup=lambda e, w, x: (w / "in/a").mkdir(parents=True)),
    c("if-corrupt-image", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "o"],
      lambda e, w, x: [w / "in/a/x.png"], setup=lambda e, w, x: text(w / "in/a/x.png", "\x89PNG broken")),
    c("if-mixed-sizes", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "o"],
      lambda e, w, x: [w / "in/b/2.png", w / "in/a/1.png", "30x32", "28x28", "--resize"], setup=mixed_sizes),
    c("if-non-utf8-class", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "o"],
      ["caf\\xe9", "not valid UTF-8"], setup=non_utf8_folder),
    c("if-out-inside-input", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "in/o"],
      lambda e, w, x: [w / "in/o", "inside the input"], setup=lambda e, w, x: copy(e.folder, w / "in")),
    c("if-resize-0", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o", "--resize", 0],
      ["--resize"], code=2),
    # teacher train / eval
    c("tt-missing-in", lambda e, w, x: ["teacher", "train", IN, w / "no", "--out", w / "t.pt"], lambda e, w, x: [w / "no"]),
    c("tt-no-shards", lambda e, w, x: ["teacher", "train", IN, w / "in", "--out", w / "t.pt"],
      lambda e, w, x: [w / "in", "no .tar shards"], setup=lambda e, w, x: (w / "in").mkdir()),
    c("tt-out-exists", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt"],
      lambda e, w, x: [w / "t.pt", "--overwrite"], setup=lambda e, w, x: copy(e.teacher, w / "t.pt")),
    c("tt-out-parent", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "no/t.pt"],
      lambda e, w, x: [w / "no/t.pt", "parent folder"]),
    c("tt-bad-arch", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--arch", "vgg99"],
      ["architecture", "vgg99"]),
    c("tt-bad-optimizer", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--optimizer", "lion"],
      ["--optimizer", "lion"], code=2),
    c("tt-bad-norm", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--norm", "fancy"],
      ["--norm", "fancy"], code=2),
    c("tt-mixed-channels", lambda e, w, x: ["teacher", "train", IN, w / "sh", "--out", w / "t.pt"],
      lambda e, w, x: [w / "sh", "28x28x3", "28x28x1", "--mode"], setup=mixed_channels),
    c("tt-limit-0", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--limit-per-class", 0],
      ["--limit-per-class"], code=2),
    c("te-missing-teacher", lambda e, w, x: ["teacher", "eval", "--teacher", w / "no.pt", IN, e.shards],
      lambda e, w, x: [w / "no.pt"]),
    c("te-not-a-checkpoint", lambda e, w, x: ["teacher", "eval", "--teacher", w / "t.pt", IN, e.shards],
      lambda e, w, x: [w / "t.pt", "not a torch checkpoint"], setup=lambda e, w, x: text(w / "t.pt")),
    c("te-pickled-code", lambda e, w, x: ["teacher", "eval", "--teacher", e.evil, IN, e.shards],
      lambda e, w, x: [e.evil, "not a safe checkpoint"]),
    c("te-class-mismatch", lambda e, w, x: ["teacher", "eval", "--teacher", e.teacher, IN, e.rgb_shards],
      lambda e, w, x: [e.rgb_shards, "3 classes"]),
    # distill
    c("d-missing-in", lambda e, w, x: ["distill", IN, w / "no", "--ipc", 1, "--teacher", e.teacher, "--out", w / "s"],
      lambda e, w, x: [w / "no"]),
    c("d-missing-teacher", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", w / "t.pt", "--out", w / "s"],
      lambda e, w, x: [w / "t.pt", "no such teacher"]),
    c("d-bad-method", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out", w / "s",
                                       "--method", "magic"], ["--method", "magic"], code=2),
    c("d-bad-select", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out", w / "s",
                                       "--select", "best"], ["--select", "best"], code=2),
    c("d-bad-precision", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out", w / "s",
                                          "--precision", "fp8"], ["--precision", "fp8"], code=2),
    c("d-bad-image-format", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out",
                                             w / "s", "--image-format", "bmp"], ["--image-format", "bmp"], code=2),
    c("d-ipc-0", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 0, "--teacher", e.teacher, "--out", w / "s"],
      ["--ipc"], code=2),
    c("d-too-few-images", lambda e, w, x: ["distill", IN, e.small_shards, "--ipc", 5, "--mipc", 5, "--teacher",
                                           e.teacher, "--out", w / "s", "--relabel-epochs", 0],
      lambda e, w, x: [e.small_shards, "too few images", "4 candidate images, need 5"]),
    c("d-image-size", lambda e, w, x: ["distill", IN, w / "in", "--ipc", 1, "--mipc", 2, "--teacher", e.teacher,
                                       "--out", w / "s"], lambda e, w, x: [w / "in", "28x28x3", "the teacher takes 28x28x1"],
      setup=lambda e, w, x: (copy(e.rgb_shards, w / "in"), (w / "in/classes.txt").unlink())),
    c("d-out-not-empty", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out", w / "s"],
      lambda e, w, x: [w / "s", "--overwrite"], setup=lambda e, w, x: text(w / "s/notes.txt")),
    c("d-out-is-file", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out", w / "s"],
      lambda e, w, x: [w / "s", "not a folder"], setup=lambda e, w, x: text(w / "s")),
    c("d-locked", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--mipc", 2, "--teacher", e.teacher, "--out",
                                   w / "s"],
      lambda e, w, x: [w / "s", f"another nrrstore process (pid {x.pid}) is writing here"],
      setup=lambda e, w, x: hold_lock(w / "s", x)),
    c("d-classes-file", lambda e, w, x: ["distill", IN, w / "in", "--ipc", 1, "--teacher", e.teacher, "--out", w / "s"],
      lambda e, w, x: [w / "in", "3 classes"],
      setup=lambda e, w, x: (copy(e.shards, w / "in"), text(w / "in/classes.txt", "a\nb\nc\n"))),
    # relabel
    c("r-missing-store", lambda e, w, x: ["relabel", w / "no", "--teacher", e.teacher], lambda e, w, x: [w / "no"]),
    c("r-bad-codec", lambda e, w, x: ["relabel", e.store, "--teacher", e.teacher, "--labels", "dbr,top2"],
      ["--labels", "top2"], code=2),
    c("r-codec-k-above-classes", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1,
                                                  "--labels", "dbrc:10", "--overwrite"],
      ["dbrc:10", "0..9"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("r-not-a-store", lambda e, w, x: ["relabel", w / "d", "--teacher", e.teacher],
      lambda e, w, x: [w / "d", "missing manifest"], setup=lambda e, w, x: text(w / "d/x.txt")),
    c("r-teacher-classes", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1],
      lambda e, w, x: [e.teacher, "10 classes", "3"], setup=lambda e, w, x: copy(e.store3, w / "s")),
    c("r-bad-precision", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--precision", "fp8"],
      ["--precision", "fp8"], code=2, setup=lambda e, w, x: copy(e.plain, w / "s")),
    c("r-bad-mix", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--mix", "blend"], ["--mix", "blend"],
      code=2, setup=lambda e, w, x: copy(e.plain, w / "s")),
    c("r-has-labels", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1],
      lambda e, w, x: [w / "s", "already has labels", "--overwrite"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("r-edited-manifest", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--overwrite"],
      lambda e, w, x: [w / "s/manifest.json", "changed"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: edit_manifest(w / "s", lambda d: d["augmentation"].update(seed=9), redigest=False))),
    c("r-locked", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1],
      lambda e, w, x: [w / "s", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: copy(e.plain, w / "s"), lambda e, w, x: hold_lock(w / "s", x))),
    # train-student
    c("ts-missing-store", lambda e, w, x: ["train-student", w / "no", "--val", e.shards], lambda e, w, x: [w / "no"]),
    c("ts-bad-labels", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--labels", "soft"],
      ["--labels", "soft"], code=2),
    c("ts-missing-codec", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1, "--labels",
                                           "topk:3"], lambda e, w, x: [e.store, "no topk:3 labels"]),
    c("ts-codec-k-too-big", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--labels", "topk:99"],
      ["--labels", "topk:99"], code=2),
    c("ts-no-distances", lambda e, w, x: ["train-student", e.plain, "--val", e.shards, "--epochs", 1],
      lambda e, w, x: [e.plain, "no DBR distances"]),
    c("ts-missing-val", lambda e, w, x: ["train-student", e.store, "--val", w / "no", "--epochs", 1],
      lambda e, w, x: [w / "no"]),
    c("ts-val-classes", lambda e, w, x: ["train-student", e.store, "--val", e.rgb_shards, "--epochs", 1],
      lambda e, w, x: [e.rgb_shards, "held-out (--val) classes"]),
    c("ts-label-42", lambda e, w, x: ["train-student", w / "s", "--val", e.shards, "--epochs", 1],
      lambda e, w, x: [w / "s/index.parquet", x.key, "label 42"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"), lambda e, w, x: setattr(x, "key", label_42(w / "s")))),
    c("ts-checkpoint-exists", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                               "--checkpoint", w / "c.pt"],
      lambda e, w, x: [w / "c.pt", "--resume", "--overwrite"], setup=lambda e, w, x: text(w / "c.pt")),
    c("ts-bad-arch", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1, "--arch", "vgg99"],
      ["architecture", "vgg99"]),
    c("ts-epochs-beyond", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 5],
      lambda e, w, x: [e.store, "beyond the 2 stored", "--cycle"]),
    # evaluate
    c("ev-missing-store", lambda e, w, x: ["evaluate", w / "no", "--val", e.shards], lambda e, w, x: [w / "no"]),
    c("ev-missing-val", lambda e, w, x: ["evaluate", e.store, "--val", w / "no", "--work", w / "ev"],
      lambda e, w, x: [w / "no"]),
    c("ev-bad-labels", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--labels", "soft", "--work", w / "ev"],
      ["--labels", "soft"], code=2),
    # Issue 31: label names are parsed strictly (ASCII, lower case, each once), as usage errors naming --labels.
    *[c(f"ev-labels-{name}", _evaluate_labels(value), ["--labels", bad], code=2)
      for name, value, bad in (("k0", "dbr,topk:0", "topk:0"), ("twice", "dbr,dbr", "named twice"),
                               ("upper", "TOPK:2", "TOPK:2"), ("fullwidth", "topk:\uff12", "topk:\uff12"),
                               ("kd-twice", "full,kd", "named twice"))],
    # Issue 31: a teacher whose cross-entropies overflow fp16 (finite in fp32) must not replace good labels.
    c("r-fp16-overflow", lambda e, w, x: ["relabel", w / "s", "--teacher", w / "t.pt", "--epochs", 1, "--overwrite"],
      lambda e, w, x: ["does not fit fp16", "--precision fp32"],
      setup=lambda e, w, x: (copy(e.store, w / "s"), edited_teacher(e, w / "t.pt", _loud_classifier))),
    c("d-nan-teacher", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--mipc", 2, "--teacher", w / "t.pt",
                                        "--out", w / "s"],
      lambda e, w, x: [w / "t.pt", "not finite"], setup=lambda e, w, x: edited_teacher(e, w / "t.pt", _nan_classifier)),
    # Issue 31 (R6): sizes that would plan years of work are refused before anything starts, naming the option.
    c("ts-epochs-huge", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 10**9, "--cycle"],
      ["--epochs", "100000"], code=2),
    c("ev-seeds-huge", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--seeds", 10**9, "--work", w / "ev"],
      ["--seeds", "1000"], code=2),
    c("r-epochs-huge", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 10**9, "--overwrite"],
      ["--epochs", "100000"], code=2, setup=lambda e, w, x: copy(e.store, w / "s")),
    c("tt-epochs-huge", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--epochs", 10**9],
      ["--epochs", "100000"], code=2),
    c("r-codec-twice", lambda e, w, x: ["relabel", e.store, "--teacher", e.teacher, "--labels", "dbr,topk:2,topk:2"],
      ["--labels", "named twice"], code=2),
    c("tt-cls-fullwidth-digit", lambda e, w, x: ["teacher", "train", IN, w / "v", "--out", w / "t.pt"],
      lambda e, w, x: [x.shard, "not an integer"], setup=lambda e, w, x: setattr(x, "shard", fullwidth_label(e, w / "v"))),
    c("ev-missing-kd", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--labels", "kd", "--work", w / "ev"],
      lambda e, w, x: [e.store, "--full-softlabels"]),
    c("ev-full-acc", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--full-acc", 93, "--work", w / "ev"],
      ["full accuracy", "93"]),
    c("ev-plot-exists", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--plot", w / "p.png", "--work", w / "ev"],
      lambda e, w, x: [w / "p.png", "--overwrite"], setup=lambda e, w, x: text(w / "p.png")),
    c("ev-plot-parent", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--plot", w / "no/p.png"],
      lambda e, w, x: [w / "no/p.png", "parent folder"]),
    c("ev-plot-bad-ext", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--plot", w / "p.gif", "--work", w / "ev"],
      lambda e, w, x: [w / "p.gif", ".png, .pdf, .svg"]),
    c("ev-work-in-store", lambda e, w, x: ["evaluate", w / "s", "--val", e.shards, "--work", w / "s/ev"],
      lambda e, w, x: [w / "s/ev", "outside the store"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("ev-seeds-0", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--seeds", 0], ["--seeds"], code=2),
    # inspect / verify
    c("in-missing", lambda e, w, x: ["inspect", w / "no"], lambda e, w, x: [w / "no"]),
    c("in-empty-folder", lambda e, w, x: ["inspect", w / "d"], lambda e, w, x: [w / "d", "no .tar shards"],
      setup=lambda e, w, x: (w / "d").mkdir()),
    c("in-grid-exists", lambda e, w, x: ["inspect", e.store, "--grid", w / "g.png"],
      lambda e, w, x: [w / "g.png", "--overwrite"], setup=lambda e, w, x: text(w / "g.png")),
    c("in-grid-parent", lambda e, w, x: ["inspect", e.store, "--grid", w / "no/g.png"],
      lambda e, w, x: [w / "no/g.png", "parent folder"]),
    c("in-grid-is-folder", lambda e, w, x: ["inspect", e.store, "--grid", w / "d.png"],
      lambda e, w, x: [w / "d.png", "is a folder"], setup=lambda e, w, x: (w / "d.png").mkdir()),
    c("in-grid-bad-ext", lambda e, w, x: ["inspect", e.store, "--grid", w / "g.gif"],
      lambda e, w, x: [w / "g.gif", ".png, .jpg, .jpeg"]),
    c("in-unknown-major", lambda e, w, x: ["inspect", w / "s"], lambda e, w, x: [w / "s/manifest.json", "9.0"],
      setup=steps(lambda e, w, x: copy(e.plain, w / "s"),
                  lambda e, w, x: edit_manifest(w / "s", lambda d: d.update(format_version="9.0"), redigest=True))),
    c("v-missing", lambda e, w, x: ["verify", w / "no"], lambda e, w, x: [w / "no", "no such store"]),
    c("v-manifest-not-json", lambda e, w, x: ["verify", w / "s"], lambda e, w, x: [w / "s/manifest.json", "JSON"],
      setup=lambda e, w, x: (copy(e.plain, w / "s"), text(w / "s/manifest.json", "{broken"))),
    c("v-teacher-missing", lambda e, w, x: ["verify", e.store, "--teacher", w / "t.pt"], lambda e, w, x: [w / "t.pt"]),
    c("v-teacher-no-distances", lambda e, w, x: ["verify", w / "s", "--teacher", e.teacher],
      lambda e, w, x: [w / "s", "no DBR distances"], setup=lambda e, w, x: copy(e.store3, w / "s")),
    c("v-sample-0", lambda e, w, x: ["verify", e.store, "--sample", 0], ["--sample"], code=2),
    # convert-softlabels
    c("c-missing-labels", lambda e, w, x: ["convert-softlabels", w / "no", "--images", e.sre2l.images, "--out", w / "s"],
      lambda e, w, x: [w / "no", "no such folder"]),
    c("c-no-epochs", lambda e, w, x: ["convert-softlabels", w / "l", "--images", e.sre2l.images, "--out", w / "s"],
      lambda e, w, x: [w / "l", "no epoch_"], setup=lambda e, w, x: (w / "l").mkdir()),
    c("c-partial-folder", lambda e, w, x: ["convert-softlabels", w / "labels", "--images", e.sre2l.images, "--out",
                                           w / "s"],
      lambda e, w, x: [w / "labels/epoch_1", "missing batch_2.tar", "--epochs 1"], setup=partial_sre2l),
    c("c-epochs-too-many", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                            w / "s", "--epochs", 3],
      lambda e, w, x: [e.sre2l.labels / "epoch_2", "--epochs 3"]),
    c("c-pickled-code", lambda e, w, x: ["convert-softlabels", w / "labels", "--images", e.sre2l.images, "--out", w / "s"],
      lambda e, w, x: [w / "labels/epoch_1/batch_0.tar", "refused to load"],
      setup=steps(lambda e, w, x: copy(e.sre2l.labels, w / "labels"),
                  lambda e, w, x: torch.save([_Payload()], w / "labels/epoch_1/batch_0.tar"))),
    c("c-image-count", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", w / "img", "--out", w / "s"],
      lambda e, w, x: [w / "img", "images make"],
      setup=lambda e, w, x: (copy(e.sre2l.images, w / "img"),
                             [min(d.iterdir()).unlink() for d in sorted((w / "img").iterdir())])),
    c("c-bad-format", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                       w / "s", "--format", "fkd"], ["--format", "fkd"], code=2),
    c("c-mean-without-std", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                             w / "s", "--mean", "0.5"], ["--mean", "--std"]),
    c("c-out-exists", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out", w / "s"],
      lambda e, w, x: [w / "s", "--overwrite"], setup=lambda e, w, x: text(w / "s/x.txt")),
    c("c-out-inside-input", lambda e, w, x: ["convert-softlabels", w / "labels", "--images", e.sre2l.images, "--out",
                                             w / "labels/s"], lambda e, w, x: [w / "labels/s", "inside the input"],
      setup=lambda e, w, x: copy(e.sre2l.labels, w / "labels")),
    c("c-order-file-missing", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images,
                                               "--out", w / "s", "--order-file", w / "o.npy"],
      lambda e, w, x: [w / "o.npy", "no such file"]),
    c("c-wrong-seed", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                       w / "s", "--teacher", e.teacher, "--sampler-seed", 7],
      lambda e, w, x: [e.sre2l.labels, "replayed views differ", "--sampler-seed"]),
    c("c-wrong-size", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                       w / "s", "--teacher", e.teacher, "--size", 32],
      lambda e, w, x: [e.teacher, "32 px", "28 px"]),
    c("c-other-images", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", w / "img", "--out", w / "s",
                                         "--teacher", e.teacher],
      lambda e, w, x: [e.sre2l.labels, "replayed views differ", "image folder"],
      setup=steps(lambda e, w, x: copy(e.sre2l.images, w / "img"), lambda e, w, x: _shuffle_images(w / "img"))),
    # import rded
    c("ir-missing", lambda e, w, x: ["import", "rded", w / "no", "--out", w / "s"], lambda e, w, x: [w / "no"]),
    c("ir-bad-class-folder", lambda e, w, x: ["import", "rded", w / "r", "--out", w / "s"],
      lambda e, w, x: [w / "r/fish", "not an RDED class folder"],
      setup=lambda e, w, x: (copy(e.rded, w / "r"), (w / "r/fish").mkdir())),
    c("ir-bad-image-name", lambda e, w, x: ["import", "rded", w / "r", "--out", w / "s"],
      lambda e, w, x: [w / "r/00001/img.jpg", "not an RDED image name"],
      setup=lambda e, w, x: (copy(e.rded, w / "r"), copy(e.rded / "00001/class00001_id00000.jpg", w / "r/00001/img.jpg"))),
    c("ir-missing-class", lambda e, w, x: ["import", "rded", w / "r", "--out", w / "s"],
      lambda e, w, x: [w / "r/00001", "--classes"],
      setup=steps(lambda e, w, x: copy(e.rded, w / "r"), lambda e, w, x: shutil.rmtree(w / "r/00001"))),
    c("ir-epochs-no-teacher", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s", "--epochs", 3],
      ["--epochs", "--teacher"]),
    c("ir-mode-vs-teacher", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s", "--teacher", e.teacher,
                                             "--mode", "RGB"], ["--mode", "--mode L"]),
    c("ir-teacher-classes", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s", "--teacher", e.teacher],
      lambda e, w, x: [e.teacher, "10 classes", "3"]),
    c("ir-out-exists", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s"],
      lambda e, w, x: [w / "s", "--overwrite"], setup=lambda e, w, x: text(w / "s/x.txt")),
    # size-report / export
    c("sr-missing", lambda e, w, x: ["size-report", w / "no"], lambda e, w, x: [w / "no", "no such store"]),
    c("sr-plot-bad-ext", lambda e, w, x: ["size-report", e.store, "--plot", w / "c.jpg"],
      lambda e, w, x: [w / "c.jpg", ".png, .pdf, .svg"]),
    c("sr-plot-exists", lambda e, w, x: ["size-report", e.store, "--plot", w / "c.png"],
      lambda e, w, x: [w / "c.png", "--overwrite"], setup=lambda e, w, x: text(w / "c.png")),
    c("sr-ipc-0", lambda e, w, x: ["size-report", e.store, "--ipc", 0], ["--ipc"], code=2),
    c("ex-missing-store", lambda e, w, x: ["export", w / "no", w / "o"], lambda e, w, x: [w / "no"]),
    c("ex-bad-layout", lambda e, w, x: ["export", e.store, w / "o", "--to", "coco"], ["--to", "coco"]),
    c("ex-out-foreign", lambda e, w, x: ["export", e.store, w / "o", "--overwrite"],
      lambda e, w, x: [w / "o", "not an nrrstore export"], setup=lambda e, w, x: text(w / "o/thesis.tex")),
    c("ex-out-in-store", lambda e, w, x: ["export", w / "s", w / "s/o"], lambda e, w, x: [w / "s/o", "inside the input store"],
      setup=lambda e, w, x: copy(e.plain, w / "s")),
    # usage errors
    c("u-unknown-command", lambda e, w, x: ["distil"], ["distil", "no such command"], code=2),
    c("u-unknown-option", lambda e, w, x: ["verify", e.store, "--fast"], ["--fast", "no such option"], code=2),
    c("u-missing-argument", lambda e, w, x: ["verify"], ["STORE", "missing"], code=2),
    c("u-missing-option", lambda e, w, x: ["distill", "--ipc", 1], ["--in", "missing"], code=2),
    c("u-not-a-number", lambda e, w, x: ["distill", IN, e.shards, "--ipc", "ten"], ["--ipc"], code=2),
    c("u-extra-argument", lambda e, w, x: ["verify", e.store, "extra"], ["extra", "unexpected"], code=2),
    # -- readers and writers: an output (or a store) that another live process is writing -------------------
    c("lock-r-overwrite", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1, "--overwrite"],
      lambda e, w, x: [w / "s", f"another nrrstore process (pid {x.pid}) is writing here"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"), lambda e, w, x: hold_lock(w / "s", x))),
    c("lock-r-store-link", lambda e, w, x: ["relabel", w / "l", "--teacher", e.teacher, "--epochs", 1],
      lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: copy(e.plain, w / "s"), lambda e, w, x: locked_link(w / "l", w / "s", x))),
    c("lock-ts-checkpoint", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                             "--checkpoint", w / "c.pt"],
      lambda e, w, x: [w / "c.pt", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "c.pt", x)),
    c("lock-ts-checkpoint-link", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                  "--checkpoint", w / "l.pt", "--overwrite"],
      lambda e, w, x: [w / "l.pt", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: text(w / "c.pt"), lambda e, w, x: locked_link(w / "l.pt", w / "c.pt", x))),
    c("lock-ev-work", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--seeds", 1, "--epochs", 1, "--work",
                                       w / "ev"],
      lambda e, w, x: [w / "ev", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "ev", x)),
    c("lock-ev-work-link", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--seeds", 1, "--epochs", 1,
                                            "--work", w / "l"],
      lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: (w / "ev").mkdir(), lambda e, w, x: locked_link(w / "l", w / "ev", x))),
    c("lock-ex-out", lambda e, w, x: ["export", e.store, w / "o"], lambda e, w, x: [w / "o", f"pid {x.pid}"],
      setup=lambda e, w, x: hold_lock(w / "o", x)),
    c("lock-ex-out-link", lambda e, w, x: ["export", e.store, w / "l"], lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: (w / "o").mkdir(), lambda e, w, x: locked_link(w / "l", w / "o", x))),
    c("lock-ir-out", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s"],
      lambda e, w, x: [w / "s", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "s", x)),
    c("lock-c-out", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                     w / "s"],
      lambda e, w, x: [w / "s", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "s", x)),
    c("lock-ir-out-link", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "l"],
      lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: (w / "s").mkdir(), lambda e, w, x: locked_link(w / "l", w / "s", x))),
    c("lock-if-out", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o"],
      lambda e, w, x: [w / "o", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "o", x)),
    c("lock-if-out-link", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "l"],
      lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: (w / "o").mkdir(), lambda e, w, x: locked_link(w / "l", w / "o", x))),
    c("lock-idx-out", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o"],
      lambda e, w, x: [w / "o", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "o", x)),
    c("lock-tt-out", lambda e, w, x: ["teacher", "train", IN, e.small_shards, "--out", w / "t.pt"],
      lambda e, w, x: [w / "t.pt", f"pid {x.pid}"], setup=lambda e, w, x: hold_lock(w / "t.pt", x)),
    c("lock-tt-out-link", lambda e, w, x: ["teacher", "train", IN, e.small_shards, "--out", w / "l.pt", "--overwrite"],
      lambda e, w, x: [w / "l.pt", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: copy(e.teacher, w / "t.pt"), lambda e, w, x: locked_link(w / "l.pt", w / "t.pt", x))),
    c("lock-d-out-link", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--mipc", 2, "--teacher", e.teacher,
                                          "--out", w / "l"],
      lambda e, w, x: [w / "l", f"pid {x.pid}"],
      setup=steps(lambda e, w, x: (w / "s").mkdir(), lambda e, w, x: locked_link(w / "l", w / "s", x))),
    # -- exhaustion and bounds: labels that cannot fit, sizes of 0 or below ----------------------------------
    c("bound-r-epochs-disk", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 10**12],
      ["--epochs", "100000"], code=2, setup=lambda e, w, x: copy(e.plain, w / "s")),  # the range, before the disk
    c("bound-r-epochs-disk-soft", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 10**12,
                                                   "--full-softlabels", "--epochs-per-file", 1],
      ["--epochs", "100000"], code=2, setup=lambda e, w, x: copy(e.plain, w / "s")),
    c("bound-ir-epochs-disk", lambda e, w, x: ["import", "rded", w / "r", "--out", w / "s", "--teacher", e.teacher,
                                               "--epochs", 10**12, "--mode", "L", "--classes", e.shards / "classes.txt"],
      ["--epochs", "100000"], code=2, setup=lambda e, w, x: _rded_ten(e, w / "r")),
    c("bound-r-workers-huge", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1, "--workers",
                                               10**9], ["--workers", f"{MAX_WORKERS}"], code=2,
      setup=lambda e, w, x: copy(e.plain, w / "s")),
    c("bound-r-epochs-per-file-0", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--epochs-per-file", 0],
      ["--epochs-per-file"], code=2),
    c("bound-r-batch-size-0", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--batch-size", 0],
      ["--batch-size"], code=2),
    c("bound-r-workers-neg", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--workers", -1],
      ["--workers"], code=2),
    c("bound-r-epochs-0", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--epochs", 0], ["--epochs"],
      code=2),
    c("bound-r-group-size-0", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--group-size", 0],
      ["--group-size"], code=2),
    c("bound-ts-batch-size-0", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--batch-size", 0],
      ["--batch-size"], code=2),
    c("bound-ts-workers-neg", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--workers", -2],
      ["--workers"], code=2),
    # -- --overwrite replaces only what nrrstore wrote: a user's own file kept in an old output stops it --------------
    c("if-overwrite-foreign", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o", "--overwrite"],
      lambda e, w, x: [w / "o", "notes.txt", "move them out"],
      setup=steps(lambda e, w, x: copy(e.shards, w / "o"),
                  lambda e, w, x: (w / "o" / "notes.txt").write_text("mine"))),
    c("d-overwrite-foreign", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--mipc", 2, "--teacher", e.teacher,
                                              "--out", w / "s", "--overwrite"],
      lambda e, w, x: [w / "s", "images/keep.png", "move them out"],
      setup=steps(lambda e, w, x: copy(e.plain, w / "s"),
                  lambda e, w, x: (w / "s" / "images" / "keep.png").write_bytes(b"not ours"))),
    # -- number options: a usage error (exit 2) naming the option as typed, never an internal name ---------------
    c("range-d-eps-neg", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--eps", -5,
                                          "--out", w / "o"], ["--eps", "0"], code=2),
    c("range-d-cam-top-5", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--cam-top", 5,
                                            "--out", w / "o"], ["--cam-top", "1"], code=2),
    c("range-d-cam-top-0", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--cam-top", 0,
                                            "--out", w / "o"], ["--cam-top", "above 0"], code=2),
    c("range-d-lr-0", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--lr", 0,
                                       "--out", w / "o"], ["--lr", "above 0"], code=2),
    c("range-d-lr-nan", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--lr", "nan",
                                         "--out", w / "o"], ["--lr", "nan"], code=2),
    c("range-d-alpha-bn-neg", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher,
                                               "--alpha-bn", -1, "--out", w / "o"], ["--alpha-bn"], code=2),
    c("range-ts-lr-neg", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--lr", -1], ["--lr"], code=2),
    c("range-ts-protocol", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--protocol", "sre2l"],
      ["--protocol", "sre2l"], code=2),
    c("range-ts-rded-dbr", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--protocol", "rded",
                                            "--labels", "dbr"], ["rded protocol", "labels kd"]),
    c("range-ts-cache-size", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--cache-dir", w / "c",
                                              "--cache-size", "garbage"], ["--cache-size", "garbage"], code=2),
    c("range-ev-cache-size-0", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--cache-dir", w / "c",
                                                "--cache-size", 0], ["--cache-size"], code=2),
    c("range-r-scale", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--scale", "0.9,0.2"],
      ["scale"]),
    c("range-r-scale-text", lambda e, w, x: ["relabel", e.plain, "--teacher", e.teacher, "--scale", "half"],
      ["--scale", "half"], code=2),
    c("bound-ts-epochs-0", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 0], ["--epochs"],
      code=2),
    c("bound-ts-eval-every-neg", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--eval-every", -1],
      ["--eval-every"], code=2),
    c("bound-ts-workers-huge", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--workers", 10**6],
      ["--workers", f"{MAX_WORKERS}"], code=2),
    c("bound-ev-batch-size-0", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--batch-size", 0],
      ["--batch-size"], code=2),
    c("bound-ev-workers-neg", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--workers", -1], ["--workers"],
      code=2),
    c("bound-ev-epochs-0", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--epochs", 0], ["--epochs"], code=2),
    c("bound-ev-workers-huge", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--workers", 10**6],
      ["--workers", f"{MAX_WORKERS}"], code=2),
    c("bound-c-epochs-per-file-0", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images,
                                                    "--out", w / "s", "--epochs-per-file", 0], ["--epochs-per-file"],
      code=2),
    c("bound-c-workers-neg", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                              w / "s", "--workers", -1], ["--workers"], code=2),
    c("bound-c-shard-size-0", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images,
                                               "--out", w / "s", "--shard-size", 0], ["--shard-size"], code=2),
    c("bound-c-size-0", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out",
                                         w / "s", "--size", 0], ["--size"], code=2),
    c("bound-c-workers-huge", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images,
                                               "--out", w / "s", "--workers", MAX_WORKERS + 1],  # just past: a regression forks each
      ["--workers", f"{MAX_WORKERS}"], code=2),
    c("bound-ir-shard-size-0", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s", "--shard-size", 0],
      ["--shard-size"], code=2),
    c("bound-ir-quality-101", lambda e, w, x: ["import", "rded", e.rded, "--out", w / "s", "--quality", 101],
      ["--quality"], code=2),
    c("bound-in-per-class-0", lambda e, w, x: ["inspect", e.store, "--per-class", 0], ["--per-class"], code=2),
    c("bound-sr-topk-0", lambda e, w, x: ["size-report", e.store, "--topk", 0], ["--topk"], code=2),
    c("bound-sr-classes-neg", lambda e, w, x: ["size-report", e.store, "--classes", -10], ["--classes"], code=2),
    c("bound-tt-batch-size-0", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--batch-size",
                                                0], ["--batch-size"], code=2),
    c("bound-tt-width-0", lambda e, w, x: ["teacher", "train", IN, e.shards, "--out", w / "t.pt", "--width", 0],
      ["--width"], code=2),
    c("bound-d-relabel-epochs-disk", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher,
                                                      "--out", w / "s", "--relabel-epochs", 10**15],
      ["--relabel-epochs", "100000"], code=2),
    c("bound-d-nrr-batch-size-0", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out",
                                                   w / "s", "--nrr-batch-size", 0], ["--nrr-batch-size"], code=2),
    c("bound-d-classes-per-pass-0", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher,
                                                     "--out", w / "s", "--classes-per-pass", 0], ["--classes-per-pass"],
      code=2),
    c("bound-d-batch-size-neg", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher, "--out",
                                                 w / "s", "--batch-size", -64], ["--batch-size"], code=2),
    c("bound-idx-per-class-0", lambda e, w, x: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", w / "o",
                                                "--per-class", 0], ["--per-class"], code=2),
    c("bound-if-limit-0", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o", "--limit", 0],
      ["--limit"], code=2),
    c("bound-if-skip-neg", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o", "--skip", -1],
      ["--skip"], code=2),
    # -- verify checks meaning: values no teacher produces, a manifest edited without its digest --------------
    # Issue 31 (R7): a manifest whose label paths leave the store, with the digest recomputed, is refused by
    # every reader and by verify (it trained on another store's labels).
    c("meaning-ts-distances-escape", lambda e, w, x: ["train-student", w / "s", "--val", e.shards, "--epochs", 1],
      lambda e, w, x: [w / "s/manifest.json", "../other/labels/distances-e0000-e0001.parquet", "leaves the store"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: edit_manifest(w / "s", _escape_distances, redigest=True))),
    c("meaning-v-distances-escape", lambda e, w, x: ["verify", w / "s"],
      lambda e, w, x: [w / "s/manifest.json", "leaves the store"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: edit_manifest(w / "s", _escape_distances, redigest=True))),
    c("meaning-ts-codec-path-escape", lambda e, w, x: ["train-student", w / "s", "--val", e.shards, "--epochs", 1],
      lambda e, w, x: [w / "s/manifest.json", "leaves the store"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"), lambda e, w, x: edit_manifest(
          w / "s", lambda d: d["labels"]["codecs"]["dbr"]["fields"].update(ids={"path": "labels/../../cod/ids",
                                                                                "dtype": "uint8"}),
          redigest=True))),
    # Issue 31: "1.0" declared, the digest dropped, 1.2's labels.codecs kept: a downgrade that skipped the checks.
    *[c(f"meaning-{cmd[0][:2]}-downgrade", _on_store(cmd), lambda e, w, x: [w / "s/manifest.json", "downgrade"],
        setup=steps(lambda e, w, x: copy(e.store, w / "s"), lambda e, w, x: edit_manifest(w / "s", _downgrade, False)))
      for cmd in (["verify"], ["train-student", "--epochs", "1"])],
    c("meaning-ex-nan", lambda e, w, x: ["export", w / "s", w / "o"], lambda e, w, x: [x.file, "non-finite"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: setattr(x, "file", damage_distances(w / "s", "d_org", float("nan"))))),
    c("meaning-ex-inf", lambda e, w, x: ["export", w / "s", w / "o"], lambda e, w, x: [x.file, "non-finite"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: setattr(x, "file", damage_distances(w / "s", "d_aug", float("-inf"))))),
    c("meaning-ev-teacher-sha", lambda e, w, x: ["evaluate", w / "s", "--val", e.shards, "--train", e.shards,
                                                 "--teacher", e.teacher, "--seeds", 1, "--epochs", 1, "--work", w / "ev"],
      lambda e, w, x: [e.teacher, "not the one that labelled the store"],
      setup=steps(lambda e, w, x: copy(e.store, w / "s"),
                  lambda e, w, x: edit_manifest(w / "s", lambda d: d["teacher"].update(sha256="0" * 64), redigest=True))),
    c("meaning-in-no-digest", lambda e, w, x: ["inspect", w / "s"],
      lambda e, w, x: [w / "s/manifest.json", "lacks its manifest_sha256"], setup=_undigested("1.1")),
    c("meaning-ts-no-digest", lambda e, w, x: ["train-student", w / "s", "--val", e.shards, "--epochs", 1],
      lambda e, w, x: [w / "s/manifest.json", "lacks its manifest_sha256"], setup=_undigested("1.1")),
    c("meaning-ex-no-digest", lambda e, w, x: ["export", w / "s", w / "o"],
      lambda e, w, x: [w / "s/manifest.json", "lacks its manifest_sha256"], setup=_undigested("1.1")),
    c("meaning-r-no-digest", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1, "--overwrite"],
      lambda e, w, x: [w / "s/manifest.json", "lacks its manifest_sha256"], setup=_undigested("1.1")),
    c("meaning-sr-no-digest-1.3", lambda e, w, x: ["size-report", w / "s"],
      lambda e, w, x: [w / "s/manifest.json", "format 1.3", "lacks its manifest_sha256"], setup=_undigested("1.3")),
    c("meaning-ev-no-digest", lambda e, w, x: ["evaluate", w / "s", "--val", e.shards, "--seeds", 1, "--epochs", 1,
                                               "--work", w / "ev"],
      lambda e, w, x: [w / "s/manifest.json", "lacks its manifest_sha256"], setup=_undigested("1.2")),
    # -- inputs: outputs inside their input, shards whose labels disagree, bad --val, --checkpoint, teachers ---
    c("input-c-out-in-images", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", w / "img", "--out",
                                                w / "img/s"], lambda e, w, x: [w / "img/s", "inside the input"],
      setup=lambda e, w, x: copy(e.sre2l.images, w / "img")),
    c("input-d-out-in-shards", lambda e, w, x: ["distill", IN, w / "in", "--ipc", 1, "--teacher", e.teacher, "--out",
                                                w / "in/s"], lambda e, w, x: [w / "in/s", "the --out output lies inside the input folder", "(--in)"],
      setup=lambda e, w, x: copy(e.shards, w / "in")),
    c("input-tt-out-in-shards", lambda e, w, x: ["teacher", "train", IN, w / "in", "--out", w / "in/t.pt"],
      lambda e, w, x: [w / "in/t.pt", "the --out output lies inside the input folder", "(--in)"], setup=lambda e, w, x: copy(e.shards, w / "in")),
    c("input-ev-work-in-val", lambda e, w, x: ["evaluate", e.store, "--val", w / "in", "--work", w / "in/ev", "--seeds",
                                               1, "--epochs", 1], lambda e, w, x: [w / "in/ev", "the --work output lies inside the input folder", "(--val)"],
      setup=lambda e, w, x: copy(e.shards, w / "in")),
    c("input-ir-out-in-input", lambda e, w, x: ["import", "rded", w / "r", "--out", w / "r/s"],
      lambda e, w, x: [w / "r/s", "inside the input"], setup=lambda e, w, x: copy(e.rded, w / "r")),
    c("input-if-out-is-root", lambda e, w, x: ["prepare", "imagefolder", w / "in", "--out", w / "in", "--overwrite"],
      lambda e, w, x: [w / "in"], setup=lambda e, w, x: copy(e.folder, w / "in")),
    c("input-ex-out-is-store", lambda e, w, x: ["export", w / "s", w / "s", "--overwrite"], lambda e, w, x: [w / "s"],
      setup=lambda e, w, x: copy(e.plain, w / "s")),
    c("input-in-grid-in-store", lambda e, w, x: ["inspect", w / "s", "--grid", w / "s/g.png"],
      lambda e, w, x: [w / "s/g.png", "the --grid output lies inside the input folder", "(PATH)"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("input-sr-plot-in-store", lambda e, w, x: ["size-report", w / "s", "--plot", w / "s/c.png"],
      lambda e, w, x: [w / "s/c.png", "the --plot output lies inside the input store", "(STORE)"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("input-ts-checkpoint-in-store", lambda e, w, x: ["train-student", w / "s", "--val", e.shards, "--epochs", 1,
                                                       "--checkpoint", w / "s/c.pt"],
      lambda e, w, x: [w / "s/c.pt", "inside the store"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("input-c-out-is-labels", lambda e, w, x: ["convert-softlabels", w / "labels", "--images", e.sre2l.images, "--out",
                                                w / "labels", "--overwrite"], lambda e, w, x: [w / "labels"],
      setup=lambda e, w, x: copy(e.sre2l.labels, w / "labels")),
    # Issue 31: an input inside the output (the reverse of the rows above), with --overwrite, must be refused,
    # not deleted with the old output; the output may be an earlier output of the same command.
    c("input-if-in-inside-out", lambda e, w, x: ["prepare", "imagefolder", w / "p/src", "--out", w / "p", "--overwrite"],
      lambda e, w, x: [w / "p", "contains the input folder", "ROOT"],
      setup=lambda e, w, x: (copy(e.folder, w / "p/src"), text(w / "p/shards.json", "{}"))),
    c("input-idx-in-inside-out", lambda e, w, x: ["prepare", "idx", w / "p/i.gz", w / "p/l.gz", "--out", w / "p",
                                                  "--overwrite"],
      lambda e, w, x: [w / "p", "contains the input file", "IMAGES"],
      setup=lambda e, w, x: (text(w / "p/shards.json", "{}"), copy(e.idx_images, w / "p/i.gz"),
                             copy(e.idx_labels, w / "p/l.gz"))),
    c("input-d-in-inside-out", lambda e, w, x: ["distill", IN, w / "d/shards", "--ipc", 1, "--teacher", e.teacher,
                                                "--out", w / "d", "--overwrite"],
      lambda e, w, x: [w / "d", "contains the input folder", "--in"],
      setup=lambda e, w, x: (copy(e.shards, w / "d/shards"), text(w / "d/manifest.json", "{}"))),
    c("input-ir-in-inside-out", lambda e, w, x: ["import", "rded", w / "st/rdin", "--out", w / "st", "--overwrite"],
      lambda e, w, x: [w / "st", "contains the input folder", "SYN_DATA"],
      setup=lambda e, w, x: (copy(e.rded, w / "st/rdin"), text(w / "st/manifest.json", "{}"))),
    c("input-ex-store-inside-out", lambda e, w, x: ["export", w / "e/src", w / "e", "--overwrite"],
      lambda e, w, x: [w / "e", "the --to output contains the input store", "(STORE)"],
      setup=lambda e, w, x: copy(e.plain, w / "e/src")),
    c("input-c-in-inside-out", lambda e, w, x: ["convert-softlabels", w / "c/labels", "--images", w / "c/images",
                                                "--out", w / "c", "--overwrite"],
      lambda e, w, x: [w / "c", "the --out output contains the input folder", "(LABELS)"],
      setup=lambda e, w, x: (copy(e.sre2l.labels, w / "c/labels"), copy(e.sre2l.images, w / "c/images"),
                             text(w / "c/manifest.json", "{}"))),
    c("input-d-out-links-to-in", lambda e, w, x: ["distill", IN, w / "in", "--ipc", 1, "--teacher", e.teacher,
                                                  "--out", w / "ln", "--overwrite"],
      lambda e, w, x: [w / "ln", "the --out output lies inside the input folder", "(--in)"],
      setup=lambda e, w, x: (copy(e.shards, w / "in"), (w / "ln").symlink_to(w / "in"))),
    # Issue 31: a lock file planted as a link would have nrrstore write its pid into the link's target.
    c("input-if-lock-symlink", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o"],
      lambda e, w, x: [w / ".lock-o", "symbolic link"],
      setup=lambda e, w, x: (text(w / "victim.txt", "important\n"), (w / ".lock-o").symlink_to(w / "victim.txt"))),
    # Issue 31: temporaries and work folders are never followed through a link planted in their place (a
    # staging folder's leftover is removed before a run: through a link that would delete the link's target).
    c("input-if-staging-symlink", lambda e, w, x: ["prepare", "imagefolder", e.folder, "--out", w / "o"],
      lambda e, w, x: [w / ".tmp-o", "symbolic link"],
      setup=lambda e, w, x: (text(w / "victim/keep.txt", "important\n"), (w / ".tmp-o").symlink_to(w / "victim"))),
    c("input-d-work-symlink", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--mipc", 2, "--teacher", e.teacher,
                                               "--out", w / "s", "--relabel-epochs", 0],
      lambda e, w, x: [w / ".work-s", "symbolic link"],
      setup=lambda e, w, x: (text(w / "victim/keep.txt", "important\n"), (w / ".work-s").symlink_to(w / "victim"))),
    c("input-r-work-symlink", lambda e, w, x: ["relabel", w / "s", "--teacher", e.teacher, "--epochs", 1],
      lambda e, w, x: [w / "s/.relabel", "symbolic link"],
      setup=lambda e, w, x: (copy(e.plain, w / "s"), text(w / "victim/keep.txt", "important\n"),
                             (w / "s/.relabel").symlink_to(w / "victim"))),
    c("input-c-work-symlink", lambda e, w, x: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images,
                                               "--out", w / "s"],
      lambda e, w, x: [w / ".convert-s", "symbolic link"],
      setup=lambda e, w, x: (text(w / "victim/keep.txt", "important\n"),
                             (w / ".convert-s").symlink_to(w / "victim"))),
    c("input-ts-checkpoint-tmp-symlink", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                          "--checkpoint", w / "ck.pt"],
      lambda e, w, x: [w / ".tmp-ck.pt", "symbolic link"],
      setup=lambda e, w, x: (text(w / "victim.txt", "important\n"), (w / ".tmp-ck.pt").symlink_to(w / "victim.txt"))),
    c("input-d-lock-hardlink", lambda e, w, x: ["distill", IN, e.shards, "--ipc", 1, "--teacher", e.teacher,
                                                "--out", w / "s"],
      lambda e, w, x: [w / ".lock-s", "not a plain file of its own"],
      setup=lambda e, w, x: (w / ".lock-s").hardlink_to(text(w / "victim.txt", "important\n"))),
    c("input-ev-plot-in-store", lambda e, w, x: ["evaluate", w / "s", "--val", e.shards, "--seeds", 1, "--epochs", 1,
                                                 "--work", w / "ev", "--plot", w / "s/x.png"],
      lambda e, w, x: [w / "s/x.png", "the --plot output lies inside the input store", "(STORE)"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("input-ts-val-disagree", lambda e, w, x: ["train-student", e.store, "--val", w / "v", "--epochs", 1],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-ev-val-disagree", lambda e, w, x: ["evaluate", e.store, "--val", w / "v", "--seeds", 1, "--epochs", 1,
                                                "--work", w / "ev"],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-d-in-disagree", lambda e, w, x: ["distill", IN, w / "v", "--ipc", 1, "--mipc", 2, "--teacher", e.teacher,
                                              "--out", w / "s", "--relabel-epochs", 0],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-tt-in-disagree", lambda e, w, x: ["teacher", "train", IN, w / "v", "--out", w / "t.pt"],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-tt-val-disagree", lambda e, w, x: ["teacher", "train", IN, e.small_shards, "--val", w / "v", "--out",
                                                w / "t.pt"],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-te-in-disagree", lambda e, w, x: ["teacher", "eval", "--teacher", e.teacher, IN, w / "v"],
      lambda e, w, x: [x.shard, "labels disagree"],
      setup=lambda e, w, x: setattr(x, "shard", disagreeing_shards(e, w / "v"))),
    c("input-ts-val-empty", lambda e, w, x: ["train-student", e.store, "--val", w / "v", "--epochs", 1],
      lambda e, w, x: [w / "v", "no .tar shards"], setup=lambda e, w, x: (w / "v").mkdir()),
    c("input-ev-val-empty", lambda e, w, x: ["evaluate", e.store, "--val", w / "v", "--seeds", 1, "--epochs", 1,
                                             "--work", w / "ev"],
      lambda e, w, x: [w / "v", "no .tar shards"], setup=lambda e, w, x: (w / "v").mkdir()),
    c("input-ev-val-names", lambda e, w, x: ["evaluate", e.store, "--val", e.small_shards, "--seeds", 1, "--epochs", 1,
                                             "--work", w / "ev"],
      lambda e, w, x: [e.small_shards, "--val", "differ"]),
    c("input-ev-val-classes", lambda e, w, x: ["evaluate", e.store, "--val", e.rgb_shards, "--seeds", 1, "--epochs", 1,
                                               "--work", w / "ev"],
      lambda e, w, x: [e.rgb_shards, "--val", "differ"]),
    c("input-ev-val-missing-default-work", lambda e, w, x: ["evaluate", w / "s", "--val", w / "no", "--seeds", 1],
      lambda e, w, x: [w / "no"], setup=lambda e, w, x: copy(e.store, w / "s")),
    c("input-ts-val-not-shards", lambda e, w, x: ["train-student", e.store, "--val", w / "v.txt", "--epochs", 1],
      lambda e, w, x: [w / "v.txt"], setup=lambda e, w, x: text(w / "v.txt")),
    c("input-ts-checkpoint-read-only", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                        "--checkpoint", w / "ro/c.pt"],
      lambda e, w, x: [w / "ro/c.pt"], setup=lambda e, w, x: read_only_folder(w / "ro", x)),
    c("input-ts-checkpoint-under-file", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                         "--checkpoint", w / "f/c.pt"],
      lambda e, w, x: [w / "f/c.pt"], setup=lambda e, w, x: text(w / "f")),
    c("input-ts-resume-not-checkpoint", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                         "--checkpoint", w / "c.pt", "--resume"],
      lambda e, w, x: [w / "c.pt"], setup=lambda e, w, x: text(w / "c.pt")),
    c("input-ts-resume-pickled-code", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                       "--checkpoint", w / "c.pt", "--resume"],
      lambda e, w, x: [w / "c.pt", "not a readable student checkpoint"], setup=lambda e, w, x: copy(e.evil, w / "c.pt")),
    c("input-ts-resume-truncated", lambda e, w, x: ["train-student", e.store, "--val", e.shards, "--epochs", 1,
                                                    "--checkpoint", w / "c.pt", "--resume"],
      lambda e, w, x: [w / "c.pt"], setup=lambda e, w, x: truncated(e.teacher, w / "c.pt")),
    c("input-r-teacher-text", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "t.pt", "--epochs", 1],
      lambda e, w, x: [w / "t.pt", "not a torch checkpoint"], setup=lambda e, w, x: text(w / "t.pt")),
    c("input-r-teacher-truncated", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "t.pt", "--epochs", 1],
      lambda e, w, x: [w / "t.pt", "not a safe checkpoint"], setup=lambda e, w, x: truncated(e.teacher, w / "t.pt")),
    c("input-r-teacher-pickled-code", lambda e, w, x: ["relabel", e.plain, "--teacher", e.evil, "--epochs", 1],
      lambda e, w, x: [e.evil, "not a safe checkpoint"]),
    c("input-r-teacher-state-dict", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "t.pt", "--epochs", 1],
      lambda e, w, x: [w / "t.pt", "not an nrrstore teacher checkpoint"],
      setup=lambda e, w, x: torch.save({"conv.weight": torch.zeros(2, 2)}, w / "t.pt")),
    c("input-r-teacher-wrong-shapes", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "t.pt", "--epochs", 1],
      lambda e, w, x: [w / "t.pt"],
      setup=lambda e, w, x: edited_teacher(e, w / "t.pt", lambda d: d["arch_kwargs"].update(width=16))),
    c("input-r-teacher-folder", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "d", "--epochs", 1],
      lambda e, w, x: [w / "d"], setup=lambda e, w, x: (w / "d").mkdir()),
    c("input-r-teacher-newer", lambda e, w, x: ["relabel", e.plain, "--teacher", w / "t.pt", "--epochs", 1],
      lambda e, w, x: [w / "t.pt", "newer"],
      setup=lambda e, w, x: edited_teacher(e, w / "t.pt", lambda d: d.update(version=99))),
    c("input-v-teacher-text", lambda e, w, x: ["verify", e.store, "--teacher", w / "t.pt"],
      lambda e, w, x: [w / "t.pt", "not a torch checkpoint"], setup=lambda e, w, x: text(w / "t.pt")),
    c("input-v-teacher-truncated", lambda e, w, x: ["verify", e.store, "--teacher", w / "t.pt"],
      lambda e, w, x: [w / "t.pt"], setup=lambda e, w, x: truncated(e.teacher, w / "t.pt")),
    c("input-v-teacher-pickled-code", lambda e, w, x: ["verify", e.store, "--teacher", e.evil],
      lambda e, w, x: [e.evil, "not a safe checkpoint"]),
    c("input-v-teacher-empty", lambda e, w, x: ["verify", e.store, "--teacher", w / "t.pt"],
      lambda e, w, x: [w / "t.pt"], setup=lambda e, w, x: text(w / "t.pt", "")),
    c("input-ev-teacher-text", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--train", e.shards, "--teacher",
                                                w / "t.pt", "--seeds", 1, "--epochs", 1, "--work", w / "ev"],
      lambda e, w, x: [w / "t.pt", "not a torch checkpoint"], setup=lambda e, w, x: text(w / "t.pt")),
    c("input-ev-teacher-pickled-code", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--train", e.shards,
                                                        "--teacher", e.evil, "--seeds", 1, "--epochs", 1, "--work",
                                                        w / "ev"],
      lambda e, w, x: [e.evil, "not a safe checkpoint"]),
    c("input-ev-teacher-truncated", lambda e, w, x: ["evaluate", e.store, "--val", e.shards, "--train", e.shards,
                                                     "--teacher", w / "t.pt", "--seeds", 1, "--epochs", 1, "--work",
                                                     w / "ev"],
      lambda e, w, x: [w / "t.pt"], setup=lambda e, w, x: truncated(e.teacher, w / "t.pt")),
]


def _shuffle_images(folder: Path) -> None:
    """Same names and count, other pictures: the labels no longer describe these images."""
    files = sorted(folder.rglob("*.png"))
    data = [p.read_bytes() for p in files]
    for p, d in zip(files, data[7:] + data[:7], strict=True):
        p.write_bytes(d)


# -- running a case ---------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a content hash (folders: "dir")."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = os.fsencode(p.relative_to(folder)).decode("utf-8", "backslashreplace")
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    code: int
    lines: list[str]
    traceback: bool
    left: list[str] = field(default_factory=list)  # new files or folders
    lost: list[str] = field(default_factory=list)  # files that changed or vanished
    missing_names: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (not self.traceback and len(self.lines) == 1 and self.lines[0].startswith("nrrstore: ")
                and not self.left and not self.lost and not self.missing_names)


def run_case(case: Case, inputs: Inputs, work: Path) -> Outcome:
    x = SimpleNamespace(finalize=None)
    try:
        if case.setup is not None:
            case.setup(inputs, work, x)
        before, shared = snapshot(work), snapshot(inputs.root)
        res = CliRunner().invoke(app, [str(a) for a in case.args(inputs, work, x)])
        after = snapshot(work)
        lost = [k for k, v in before.items() if after.get(k) != v]
        lost += [f"(input) {k}" for k, v in snapshot(inputs.root).items() if shared.get(k) != v]
        lines = res.stderr.splitlines()
        line = lines[0] if lines else ""
        names = [str(n) for n in case.names(inputs, work, x)]
        crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
        return Outcome(res.exit_code, lines, crashed or "Traceback" in res.output,
                       left=[k for k in after if k not in before], lost=lost,
                       missing_names=[n for n in names if n not in line])
    finally:
        if x.finalize is not None:
            x.finalize()


def tally(cases: list[Case], inputs: Inputs, scratch: Path) -> dict[str, int]:
    """The counts README.md records: cases tried, refused cleanly, tracebacks, leftovers, data lost."""
    counts = {"cases": 0, "refused cleanly": 0, "tracebacks": 0, "leftovers": 0, "data lost": 0}
    for case in cases:
        work = scratch / case.id
        work.mkdir(parents=True)
        out = run_case(case, inputs, work)
        counts["cases"] += 1
        counts["refused cleanly"] += int(out.clean and out.code == case.code)
        counts["tracebacks"] += int(out.traceback)
        counts["leftovers"] += int(bool(out.left))
        counts["data lost"] += int(bool(out.lost))
        if not (out.clean and out.code == case.code):
            print(f"{case.id}: exit {out.code}, {out.lines}, left {out.left}, lost {out.lost}, "
                  f"unnamed {out.missing_names}", file=sys.stderr)
    return counts


if __name__ == "__main__":
    import tempfile

    from tests._teacher import one_thread

    with tempfile.TemporaryDirectory() as tmp, one_thread():
        shared = build_inputs(Path(tmp) / "inputs")
        print(json.dumps(tally(CASES, shared, Path(tmp) / "cases"), indent=2))
