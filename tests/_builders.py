"""Builders that several test modules share: stores, SRe2L and RDED folders, a CLI app, a trained teacher.

Test modules import these from here rather than from one another.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image

from nrrstore.format.writer import StoreWriter
from nrrstore.models.checkpoint import Teacher
from nrrstore.models.registry import build_model
from nrrstore_cli import convert_cmd
from tests._real import FMNIST_CLASSES, fmnist


# -- stores -------------------------------------------------------------------------------------------
def write_fmnist_store(path: Path, per_class: int = 6, shard_size: int = 16, **kw) -> list[tuple[str, np.ndarray, int]]:
    samples = list(fmnist("train", per_class))
    with StoreWriter(path, FMNIST_CLASSES, shard_size=shard_size, **kw) as w:
        for key, img, label in samples:
            w.add_image(key, img, label, {"source": key})
        w.finalize()
    return samples


# -- loader batches -----------------------------------------------------------------------------------
def labelled_fmnist_store(path: Path, epochs: int) -> Path:
    """100 real images (10 per class) relabelled by the test teacher for ``epochs`` epochs: fp16 distances and
    soft labels, the store the student tests train on (one thread)."""
    from nrrstore.labels.relabel import relabel
    from nrrstore.models import load_teacher
    from nrrstore.replay.recipe import AugRecipe
    from tests._teacher import one_thread, teacher_path

    with one_thread():
        write_fmnist_store(path, per_class=10, shard_size=50)
        relabel(path, load_teacher(teacher_path()), epochs, AugRecipe(size=28, group_size=25), full_softlabels=True,
                batch_size=50)
    return path


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            if isinstance(x[k], torch.Tensor) and not torch.equal(x[k], y[k]):
                return False
            if not isinstance(x[k], torch.Tensor) and x[k] != y[k]:
                return False
    return True


# -- fixtures written in SRe2L's format ---------------------------------------------------------------
def write_imagefolder(root: Path, per_class: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Fashion-MNIST images as PNG class folders; returns them in ImageFolder order (sorted, sorted)."""
    for key, img, label in fmnist("train", per_class):
        folder = root / f"{label}_{FMNIST_CLASSES[label].replace('/', '-')}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{key}.png")
    images, labels = [], []
    for label, cls in enumerate(sorted(os.listdir(root))):
        for name in sorted(os.listdir(root / cls)):
            images.append(np.asarray(Image.open(root / cls / name)))
            labels.append(label)
    return images, np.array(labels)


def rrc(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3) with a numpy generator."""
    for _ in range(10):
        target = h * w * rng.uniform(0.08, 1.0)
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def rand_bbox(size: tuple[int, ...], lam: float, rng: np.random.Generator) -> list[np.int64]:
    """SRe2L's rand_bbox: 'W' is dim 2 (height), so x indexes the height axis."""
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = rng.integers(W), rng.integers(H)
    return [np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H),
            np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H)]


def render(img: np.ndarray, frac: torch.Tensor, flip: bool, size: int) -> torch.Tensor:
    """A view as SRe2L's replay makes it: PIL-rounded crop box, resize, flip, [0, 1] pixels."""
    h, w = img.shape[:2]
    f = [float(v) for v in frac]
    top, left = round(f[0] * h), round(f[1] * w)
    bottom, right = round(f[0] * h + f[2] * h), round(f[1] * w + f[3] * w)
    x = torch.from_numpy(img.copy())[None, top:bottom, left:right].float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.flip(-1) if flip else x


@dataclass
class Fixture:
    labels_dir: Path
    images_dir: Path
    images: list[np.ndarray]
    y: np.ndarray
    batch: int
    # per epoch, per batch: (positions, crops [B,4] ints, flip, perm or None, lam or None, box or None, logits)
    records: list[list[tuple]] = field(default_factory=list)


def write_sre2l(labels_dir: Path, images: list[np.ndarray], y: np.ndarray, mixes: list[str], *, batch: int,
                dtype: torch.dtype, teacher=None, num_classes: int = 10, size: int = 28, seed: int = 42) -> list:
    """``epoch_{e}/batch_{b}.tar`` exactly as SRe2L's relabel saves them; returns what was saved."""
    n = len(images)
    rng = np.random.default_rng(7)
    g = torch.Generator()
    g.manual_seed(seed)
    # SRe2L batches a plain range of indices; a range is a map-style dataset at run time.
    indices = cast("torch.utils.data.Dataset[int]", range(n))
    loader: torch.utils.data.DataLoader[int] = torch.utils.data.DataLoader(
        indices, batch_size=batch, sampler=torch.utils.data.RandomSampler(range(n), generator=g))
    records = []
    for e, mix in enumerate(mixes):
        (labels_dir / f"epoch_{e}").mkdir(parents=True)
        epoch = []
        for b, idx in enumerate(loader):
            pos = idx.numpy().astype(np.int64)
            crops = np.array([rrc(rng, *images[p].shape[:2]) for p in pos])
            coords = torch.tensor([[i / 28, j / 28, h / 28, w / 28] for i, j, h, w in crops], dtype=torch.float32)
            flip = torch.from_numpy(rng.random(len(pos)) < 0.5)
            views = torch.stack([render(images[p], coords[k], bool(flip[k]), size) for k, p in enumerate(pos)])
            perm = lam = box = None
            if mix != "none":
                perm = torch.from_numpy(rng.permutation(len(pos)))
                lam = float(rng.beta(1.0, 1.0))
                if mix == "cutmix":
                    box = rand_bbox(tuple(views.shape), lam, rng)
                    x1, y1, x2, y2 = box
                    views[:, :, x1:x2, y1:y2] = views[perm, :, x1:x2, y1:y2]
                else:
                    views = lam * views + (1 - lam) * views[perm]
            if teacher is not None:
                with torch.inference_mode():
                    logits = teacher.model(teacher.normalize(views)).to(dtype)
            else:
                logits = torch.from_numpy(rng.normal(0, 3, (len(pos), num_classes))).to(dtype)
            torch.save([coords, flip, perm, lam, box, logits], labels_dir / f"epoch_{e}" / f"batch_{b}.tar")
            epoch.append((pos, crops, flip.numpy(), None if perm is None else perm.numpy(), lam, box, logits))
        records.append(epoch)
    return records


def make_fixture(root: Path, mixes: list[str], *, per_class: int = 4, batch: int = 16,
                 dtype: torch.dtype = torch.float16, teacher=None) -> Fixture:
    images, y = write_imagefolder(root / "images", per_class)
    records = write_sre2l(root / "labels", images, y, mixes, batch=batch, dtype=dtype, teacher=teacher)
    return Fixture(root / "labels", root / "images", images, y, batch, records)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- RDED synthetic-image trees ----------------------------------------------------------------------
def write_rded(root: Path, classes: list[int], ipc: int = 2, ext: str = "jpg") -> dict[tuple[int, int], Path]:
    """``{class:05d}/class{class:05d}_id{id:05d}.jpg`` the way RDED's save_images writes them."""
    by_class: dict[int, list[np.ndarray]] = {}
    for _, img, label in fmnist("train", ipc):
        by_class.setdefault(label, []).append(img)
    written = {}
    for c in classes:
        folder = root / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(by_class[c][:ipc]):
            path = folder / f"class{c:05d}_id{i:05d}.{ext}"
            Image.fromarray(img, "L").save(path)
            written[(c, i)] = path
    return written


# -- CLI ----------------------------------------------------------------------------------------------
def make_app(*commands: ModuleType) -> typer.Typer:
    """A bare Typer root with the given command modules (default: convert_cmd) registered on it."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    for module in commands or (convert_cmd,):
        module.register(app)
    return app


# -- CIDD/NRR: a small teacher trained here on real Fashion-MNIST -------------------------------------
MEAN, STD = (0.2860,), (0.3530,)
TRAIN_N = 2000  # teacher training images: the first TRAIN_N of the embedded train split
HELD_OUT = 3000  # the embedded test split starts here: never seen by the teacher


@cache
def fmnist_train() -> tuple[np.ndarray, np.ndarray]:
    """The embedded Fashion-MNIST (train, then test) as uint8 [N,28,28] and int64 [N]."""
    rows = list(fmnist("train")) + list(fmnist("test"))
    assert len(fmnist("train")) == HELD_OUT
    return np.stack([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=np.int64)


def class_images(label: int, n: int, start: int = HELD_OUT) -> tuple[list[str], torch.Tensor]:
    """`n` held-out images of class `label` as (keys, uint8 [n,1,28,28])."""
    images, labels = fmnist_train()
    rows = np.flatnonzero(labels[start:] == label)[:n] + start
    return [f"train-{r:05d}" for r in rows], torch.from_numpy(images[rows]).unsqueeze(1)


@cache
def trained_teacher(norm: str = "group") -> Teacher:
    """ConvNet-3 (width 16) trained for one epoch on 2000 real images (~70% held-out accuracy, ~3 s)."""
    from nrrstore.train.teacher import train_classifier

    images, labels = fmnist_train()
    x = torch.from_numpy(images[:TRAIN_N]).unsqueeze(1)
    y = torch.from_numpy(labels[:TRAIN_N])
    model = build_model("convnet3", 10, 1, 28, seed=0, width=16, norm=norm)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(TRAIN_N, generator=torch.Generator().manual_seed(epoch))
        return [((x[perm[i:i + 64]].float() / 255 - MEAN[0]) / STD[0], y[perm[i:i + 64]])
                for i in range(0, TRAIN_N, 64)]

    train_classifier(model, batches, epochs=1, lr=0.003, optimizer="adam", seed=0)
    model.eval().requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return Teacher(model=model, arch="convnet3", num_classes=10, in_channels=1, image_size=28,
                   classes=[str(i) for i in range(10)], mean=MEAN, std=STD, sha256="test", spec="convnet3",
                   arch_kwargs={"width": 16, "norm": norm})


def cidd_config(**kw: Any) -> Any:
    """A `CiddConfig` with what the class defaulted to before the presets became the single source (RDED's crop
    protocol: factor 2, mipc 300, scale 0.08-1, any prediction, the first images), so the CIDD unit tests keep
    their meaning; every argument given wins."""
    from nrrstore.distill.cidd_config import CiddConfig

    return CiddConfig(**{"factor": 2, "mipc": 300, "scale": (0.08, 1.0), "correct_only": False, "sources": "first",
                         **kw})


def forge_checksums(store: Path) -> None:
    """Make the manifest agree with the bytes now on disk (sizes, sha256, digest; a listed file that is gone is
    unlisted): damage a buggy writer or a careful forger could leave, which only the content checks behind the
    readers' checksum pass can catch."""
    import hashlib
    import json

    from nrrstore.format.manifest import DIGEST_KEY, manifest_digest

    doc = json.loads((store / "manifest.json").read_text())
    doc["files"] = [e for e in doc["files"] if (store / e["path"]).is_file()]
    for entry in doc["files"]:
        data = (store / entry["path"]).read_bytes()
        entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc, indent=2))


def labelled_arrays_store(path: Path, teacher: Teacher) -> Path:
    """A small Fashion-MNIST store with every kind of label array: DBR distances, full soft labels, a top-2 codec
    and its class prior (two epochs)."""
    from nrrstore.labels.relabel import relabel
    from nrrstore.replay.recipe import AugRecipe

    write_fmnist_store(path, per_class=3)
    relabel(path, teacher, 2, AugRecipe(size=28, group_size=10, seed=5), batch_size=30, full_softlabels=True,
            codecs=["dbr", "topk:2"])
    return path


def forge_array(store: Path, rel: str, change: Any) -> None:
    """Apply ``change`` (in place, to a numpy copy) to the label array ``rel`` and forge the manifest to agree."""
    import zarr

    arr = zarr.open_array(store / rel, mode="r+")
    data = np.asarray(arr[...])
    change(data)
    arr[...] = data
    forge_checksums(store)
