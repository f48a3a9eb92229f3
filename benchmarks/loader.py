"""S2: the training loader against a faithful SRe2L loader and a training-realistic webdataset one.

Three readers of the same images, each serving whole training batches (B = ``--batch-size``) of
augmented views (RandomResizedCrop + flip + CutMix, normalized) with their labels:

- **nrrstore**: ``make_loader(store, labels="dbr")``: workers decode partner groups and send
  uint8; this process renders the exact stored views and adds the two DBR distances.
- **SRe2L**: what SRe2L's ``train_FKD.py`` does: an ImageFolder of the same image files; per
  step one ``torch.load`` of that batch's label file (coords, flip, mix index, lam, box, fp16
  soft labels of the dataset's own width); per image a PIL open, crop from the stored
  coordinates, bilinear resize, flip, ToTensor, Normalize (in the workers); CutMix within the
  batch from the stored index and box (in this process, as SRe2L's training loop does). The
  label files' loads run in the workers too (the strongest placement).
- **webdataset**: ``wds.WebDataset(the store's shards).decode("pil")``, a random PIL
  RandomResizedCrop (crop + bilinear resize in one PIL call) and flip per sample, batched as
  uint8 in the workers; here: float conversion, normalization and a batch CutMix (one box per
  batch, partner = the next sample, as torchvision v2 / timm do).

Two image sets: 28 px Fashion-MNIST PNGs (``--fmnist`` shards) and 224 px RGB JPEGs (crops of
scikit-image's photos, benchmarks/photos224.py). Every reader makes ``--repeat`` passes over one
epoch after a warm-up pass (page cache warm for all); best and median samples/s are printed with
the ratios of the same run. One torch thread in this process; DataLoader workers use one each.
Targets (224 px JPEG): nrrstore 2 workers >= 1.7x its 0 workers; >= 1.5x SRe2L at the same worker
count; >= 0.9x webdataset. ``--memory`` adds peak RSS at two sizes and the decode cache in RSS.

    python benchmarks/loader.py                      # both sets, workers 0 1 2
    python benchmarks/loader.py --sets 224 --repeat 3 --memory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos224 import photo_jpegs, write_store

from nrrstore.format.reader import Store
from nrrstore.format.writer import StoreWriter
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.replay.recipe import store_recipe, view_params_batch
from nrrstore.sources.shards import iter_samples
from nrrstore.train.loader import make_loader

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "loader"
FMNIST = Path("/work/fm/train")
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FM_NORM = {"mean": [0.286], "std": [0.353]}


# -- the data ----------------------------------------------------------------------------------------
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``n`` Fashion-MNIST training images as arrays (for label_bytes.py): Debian's IDX files, else
    the embedded subset."""
    classes = (ROOT / "data/fashion-mnist/classes.txt").read_text().splitlines()
    if (DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        from nrrstore.sources import read_idx_pair

        images, labels = read_idx_pair(DEBIAN / "train-images-idx3-ubyte.gz", DEBIAN / "train-labels-idx1-ubyte.gz")
        return images[:n], labels[:n].astype(np.int64), classes
    samples = [s for _, s in zip(range(n), iter_samples(ROOT / "data/fashion-mnist/train"), strict=False)]
    return np.stack([s.image for s in samples]), np.array([s.label for s in samples]), classes


def fmnist_png(n: int, shards: Path) -> list[tuple[bytes, int]]:
    """The first ``n`` Fashion-MNIST samples as their PNG bytes (as the shards hold them)."""
    out = []
    for s in iter_samples(shards if shards.exists() else ROOT / "data/fashion-mnist/train", decode=False):
        if s.data is None:  # iter_samples keeps every image member's stored bytes
            raise RuntimeError(f"{s.shard}: {s.key} has no stored image bytes")
        out.append((s.data, s.label))
        if len(out) == n:
            break
    return out


def build(kind: str, n: int, work: Path) -> tuple[Path, Path, int]:
    """A relabelled store (1 epoch of distances) and an ImageFolder of the same files; returns them and C."""
    work.mkdir(parents=True, exist_ok=True)  # outputs' parent folders must exist
    if kind == "28":
        items, classes, ext = fmnist_png(n, FMNIST), 10, "png"
        store = work / "store"
        if store.exists():
            shutil.rmtree(store)
        names = (ROOT / "data/fashion-mnist/classes.txt").read_text().splitlines()
        with StoreWriter(store, names, image_format="png", shard_size=1024, normalization=FM_NORM) as w:
            for i, (data, c) in enumerate(items):
                w.add_encoded(f"fm_{i:06d}", data, c)
            w.finalize()
        teacher = load_teacher("convnet3", num_classes=10, image_size=28, normalization=FM_NORM,
                               arch_kwargs={"width": 16})
    else:
        classes, ext = 6, "jpg"
        items = photo_jpegs(n, classes=classes)
        store = write_store(work / "store", items, classes, shard_size=256)
        teacher = load_teacher("convnet3", num_classes=classes, image_size=224, normalization=IMAGENET,
                               arch_kwargs={"width": 8})
    relabel(store, teacher, 1, batch_size=256)  # distances' values do not matter for speed
    folder = work / "imagefolder"
    if folder.exists():
        shutil.rmtree(folder)
    for i, (data, c) in enumerate(items):
        p = folder / f"c{c:03d}" / f"img{i:06d}.{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return store, folder, classes


# -- the SRe2L loader ------------------------------------------------------------------------------------
def write_sre2l_labels(store: Store, folder: Path, labels: Path, batch: int, classes: int) -> list[Path]:
    """SRe2L's per-batch label files for epoch 0: [coords, flip, mix index, lam, box, fp16 soft labels]."""
    if labels.exists():
        shutil.rmtree(labels)
    labels.mkdir(parents=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    n = len(files)
    recipe = store_recipe(store.manifest)
    m = store.manifest
    g = torch.Generator().manual_seed(42)
    order = torch.randperm(n, generator=g).numpy()  # SRe2L's RandomSampler
    views = view_params_batch(recipe, 0, np.arange(n), m.image.height, m.image.width)
    rng = np.random.default_rng(0)
    out = []
    for b in range(math.ceil(n / batch)):
        idx = order[b * batch:(b + 1) * batch]
        v = views.take(idx)
        h, w = m.image.height, m.image.width
        coords = torch.from_numpy(np.stack([v.crop_i / h, v.crop_j / w, v.crop_h / h, v.crop_w / w], 1).astype(np.float32))
        lam = float(rng.beta(1.0, 1.0))
        cut = int(recipe.size * math.sqrt(1 - lam))
        cx, cy = rng.integers(recipe.size), rng.integers(recipe.size)
        box = [np.clip(cx - cut // 2, 0, recipe.size), np.clip(cy - cut // 2, 0, recipe.size),
               np.clip(cx + cut // 2, 0, recipe.size), np.clip(cy + cut // 2, 0, recipe.size)]
        soft = torch.softmax(torch.randn(len(idx), classes, generator=g), 1).half()
        path = labels / f"batch_{b}.tar"
        torch.save([coords, torch.from_numpy(v.flip.copy()), torch.from_numpy(rng.permutation(len(idx))), lam, box,
                    soft, torch.from_numpy(idx)], path)
        out.append(path)
    return out


class SRe2LBatches(Dataset):
    """One item = one SRe2L training step: its label file, then every image of the batch."""

    def __init__(self, folder: Path, labels: list[Path], size: int, norm: dict) -> None:
        self.files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.targets = [int(p.parent.name[1:]) for p in self.files]
        self.labels, self.size = labels, size
        self.mean = torch.tensor(norm["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(norm["std"]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _view(self, i: int, coords: torch.Tensor, flip: bool) -> torch.Tensor:
        with open(self.files[i], "rb") as f:  # torchvision's pil_loader
            img: Image.Image = Image.open(f)
            img = img.convert("RGB" if len(self.mean) == 3 else "L")
        w, h = img.size
        fi, fj, fh, fw = (float(c) for c in coords)
        img = img.crop((fj * w, fi * h, (fj + fw) * w, (fi + fh) * h)).resize((self.size, self.size), Image.Resampling.BILINEAR)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, dtype=np.uint8))  # ToTensor
        x = (x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)).float().div_(255)
        return (x - self.mean) / self.std  # Normalize

    def __getitem__(self, b: int) -> dict:
        coords, flip, index, lam, box, soft, idx = torch.load(self.labels[b], weights_only=False)
        images = torch.stack([self._view(int(i), coords[k], bool(flip[k])) for k, i in enumerate(idx.tolist())])
        return {"images": images, "index": index, "lam": lam, "box": [int(v) for v in box], "soft": soft,
                "y": torch.tensor([self.targets[int(i)] for i in idx])}


def sre2l_loader(ds: SRe2LBatches, workers: int):
    for batch in DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None):
        x1, y1, x2, y2 = batch["box"]  # SRe2L's mix_aug: CutMix within the batch, on the training side
        images = batch["images"]
        images[:, :, x1:x2, y1:y2] = images[batch["index"], :, x1:x2, y1:y2]
        yield {"images": images, "y": batch["y"], "soft": batch["soft"].float()}


# -- the webdataset loader ---------------------------------------------------------------------------------
class RandomResizedCropFlip:
    """torchvision RandomResizedCrop.get_params + a PIL crop-and-resize in one call + a random flip."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> np.ndarray:
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                i, j = random.randint(0, h - ch), random.randint(0, w - cw)
                break
        else:
            i, j, ch, cw = 0, 0, h, w
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(j, i, j + cw, i + ch))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(img)


def webdataset_loader(urls: list[str], size: int, batch: int, workers: int, norm: dict):
    ds = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
          .to_tuple("jpg;png", "cls").map_tuple(RandomResizedCropFlip(size), int).batched(batch))
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    for pixels, y in DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None):
        x = torch.as_tensor(pixels)
        x = (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).float().div_(255).sub_(mean).div_(std)
        lam = random.betavariate(1.0, 1.0)  # batch CutMix (torchvision v2 / timm): one box, partner = next sample
        cut = int(size * math.sqrt(1 - lam))
        cy, cx = random.randrange(size), random.randrange(size)
        y1, y2 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
        x1, x2 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
        x[:, :, y1:y2, x1:x2] = x.roll(1, 0)[:, :, y1:y2, x1:x2]
        yield {"images": x, "y": torch.as_tensor(y)}


# -- timing ----------------------------------------------------------------------------------------------
def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def rates(make, n: int, repeat: int) -> tuple[float, float, float, float]:
    """(best, median) samples/s over ``repeat`` passes after a warm-up, and the CPU ms per sample of
    this process and of the workers (medians); checks the sample count."""
    times, here, there = [], [], []
    for r in range(repeat + 1):
        t0, (c0, k0) = time.perf_counter(), _cpu()
        count = 0
        for batch in make():
            count += len(batch["y"])
        dt = time.perf_counter() - t0
        c1, k1 = _cpu()
        if count != n:
            sys.exit(f"a reader served {count} samples, expected {n}")
        if r:
            times.append(dt)
            here.append((c1 - c0) / n * 1e3)
            there.append((k1 - k0) / n * 1e3)
    return n / min(times), n / statistics.median(times), statistics.median(here), statistics.median(there)


def bench(kind: str, n: int, batch: int, workers: list[int], repeat: int) -> list[dict]:
    work = WORK / kind
    store_path, folder, classes = build(kind, n, work)
    store = Store(store_path)
    m = store.manifest
    size = store_recipe(m).size
    norm = m.normalization
    if norm is None:
        sys.exit(f"{store_path}: the store records no normalization")
    label_files = write_sre2l_labels(store, folder, work / "sre2l-labels", batch, classes)
    sre2l = SRe2LBatches(folder, label_files, size, norm)
    urls = [str(store.path / s) for s in m.shards]
    ext = "PNG" if kind == "28" else "JPEG"
    print(f"\n{n} images, {size} px {ext}, {len(urls)} shards, batch {batch}, {classes} classes; "
          f"torch threads here {torch.get_num_threads()}")
    rows: list[dict[str, Any]] = []
    for w in workers:
        # cache_mb=0: every epoch decodes, like the baselines and like a store larger than the cache
        loader = make_loader(store_path, 0, batch, "dbr", workers=w, cache_mb=0)
        ours = rates(lambda loader=loader: loader, n, repeat)
        rows.append({"set": kind, "workers": w, "nrrstore": ours, "decoded": loader.decoded,
                     "sre2l": rates(lambda w=w: sre2l_loader(sre2l, w), n, repeat),
                     "webdataset": rates(lambda w=w: webdataset_loader(urls, size, batch, w, norm), n, repeat)})
        r = rows[-1]
        print(f"  workers {w}: decodes per epoch {loader.decoded}")
        for name in ("nrrstore", "sre2l", "webdataset"):
            best, med, here, there = r[name]
            print(f"    {name:10s} {best:7.0f}/s best, {med:7.0f} median; CPU ms/sample: this process {here:.3f}, "
                  f"workers {there:.3f}", flush=True)
    base = next((r for r in rows if r["workers"] == 0), None)
    print(f"  {'workers':>7} {'vs 0 workers':>13} {'vs SRe2L':>9} {'vs webdataset':>14}   (best; median)")
    for r in rows:
        vs0 = f"{r['nrrstore'][0] / base['nrrstore'][0]:.2f}; {r['nrrstore'][1] / base['nrrstore'][1]:.2f}" if base else "-"
        print(f"  {r['workers']:>7} {vs0:>13} {r['nrrstore'][0] / r['sre2l'][0]:5.2f}; {r['nrrstore'][1] / r['sre2l'][1]:.2f}"
              f" {r['nrrstore'][0] / r['webdataset'][0]:8.2f}; {r['nrrstore'][1] / r['webdataset'][1]:.2f}")
    print("  CPU-bound projection with 2 free cores for 2 workers (samples/s = min(1 / this process's CPU per"
          " sample, 2 / workers' CPU per sample), from the 2-worker run):")
    for r in rows:
        if r["workers"] != 2:
            continue
        proj = {k: min(1e3 / max(r[k][2], 1e-9), 2e3 / max(r[k][3], 1e-9)) for k in ("nrrstore", "sre2l", "webdataset")}
        zero = next((q for q in rows if q["workers"] == 0), None)
        own0 = 1e3 / (zero["nrrstore"][2] + zero["nrrstore"][3]) if zero else float("nan")
        print(f"    nrrstore {proj['nrrstore']:.0f}/s ({proj['nrrstore'] / own0:.2f}x its 0-worker CPU rate {own0:.0f}/s), "
              f"SRe2L {proj['sre2l']:.0f}/s (ratio {proj['nrrstore'] / proj['sre2l']:.2f}), "
              f"webdataset {proj['webdataset']:.0f}/s (ratio {proj['nrrstore'] / proj['webdataset']:.2f})")
    return rows


# -- memory ------------------------------------------------------------------------------------------------
def peak_rss(store: Path, epochs: int, workers: int, cache_mb: int) -> dict:
    """Peak RSS (MB, VmHWM) of a fresh process iterating the loader, and of its largest worker (ru_maxrss,
    which counts the pages a forked worker shares with its parent)."""
    code = (
        "import json, resource, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from nrrstore.train.loader import make_loader\n"
        f"loader = make_loader({str(store)!r}, 0, 100, 'dbr', workers={workers}, num_epochs={epochs}, cycle=True,"
        f" cache_mb={cache_mb})\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "n = sum(len(b['y']) for b in loader)\n"
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'views': n, 'main_mb': hwm / 1024, 'worker_mb': kids.ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(work: Path, only: bool = False) -> None:
    print("\nPeak RSS (MB) of the loader, 224 px JPEG, batch 100, 2 workers (fresh process each):")
    stores = {}
    for n in (300, 1200):
        items = photo_jpegs(n, classes=6, seed=1)
        stores[n] = write_store(work / f"mem-{n}", items, 6)
        relabel(stores[n], load_teacher("convnet3", num_classes=6, image_size=224, normalization=IMAGENET,
                                        arch_kwargs={"width": 8}), 1, batch_size=256)
    for n, epochs in ((300, 2), (1200, 2), (300, 8)):
        r = peak_rss(stores[n], epochs, 2, 256)
        print(f"  {n:5d} images x {epochs} epochs ({r['views']} views): main {r['main_mb']:.0f}, worker {r['worker_mb']:.0f}")
    print("Decode cache in RSS (1200 images = 180 MB decoded, 0 workers, 3 epochs):")
    base = peak_rss(stores[1200], 3, 0, 0)["main_mb"]
    for cap in (32, 128):
        r = peak_rss(stores[1200], 3, 0, cap)
        print(f"  cache_mb {cap:4d}: main {r['main_mb']:.0f} MB = no cache + {r['main_mb'] - base:.0f} MB")
    print(f"  cache_mb    0: main {base:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["28", "224"], choices=["28", "224"])
    ap.add_argument("--images-28", type=int, default=10000)
    ap.add_argument("--images-224", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also peak RSS at two sizes and the decode cache")
    ap.add_argument("--memory-only", action="store_true", help="only the memory figures")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for kind in [] if args.memory_only else args.sets:
        bench(kind, args.images_28 if kind == "28" else args.images_224, args.batch_size, args.workers, args.repeat)
    if args.memory or args.memory_only:
        memory(WORK)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print("targets (224 px JPEG): 2 workers >= 1.7x 0 workers; >= 1.5x SRe2L (same workers); >= 0.9x webdataset")


if __name__ == "__main__":
    main()
