"""P2 and P2b: training-loader throughput, side by side with its baselines in one run.

P2  nrrstore's loader (decode + exact augmentation replay + DBR distances, `make_loader(labels="dbr")`)
    against a plain webdataset decode-only pipeline over the *same shards*
    (`WebDataset(urls).decode("l8").to_tuple("png", "cls").batched(B)`), with 0 and 2 workers.
    Target: ratio >= 0.8.
P2b the same loader against an SRe2L/FKD-style loader: one torch file per (epoch, batch) holding the
    batch's full fp16 soft labels and its augmentation parameters, read with `torch.load`, images
    read and decoded one by one, and the same views rendered with the same `render_view`/`mix_views`
    (so the only difference is where the labels come from). Run at the store's own class count
    and at 1000 classes (ImageNet-size label files). Target: >= 2x.

Images: real Fashion-MNIST (the Debian IDX files when installed, else the embedded subset), written
as a store with PNG images; distances from a randomly initialised ConvNet-3 teacher (loader speed
does not depend on what the teacher knows). Each reader makes `--repeat` passes over one epoch after
one warm-up pass (page cache warm for everybody); the best pass is reported. The main process runs
torch on one thread by default, as DataLoader workers do, so 0-worker figures are the loader alone.

    python benchmarks/loader.py                  # 10000 images
    python benchmarks/loader.py --images 2000 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset

from nrrstore.distill.relabel import relabel
from nrrstore.format.images import decode_image
from nrrstore.format.reader import Store
from nrrstore.format.writer import StoreWriter
from nrrstore.models import load_teacher
from nrrstore.train.augment import ViewBatch, epoch_plan, mix_views, render_view, view_params_batch
from nrrstore.train.loader import make_loader, store_recipe, to_chw

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
WORK = ROOT / "benchmarks" / "_work" / "loader"


def fashion_mnist(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = (ROOT / "data/fashion-mnist/classes.txt").read_text().splitlines()
    if (DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        from nrrstore.sources import read_idx_pair

        images, labels = read_idx_pair(DEBIAN / "train-images-idx3-ubyte.gz", DEBIAN / "train-labels-idx1-ubyte.gz")
        return images[:n], labels[:n].astype(np.int64), classes
    from nrrstore.sources import iter_samples

    samples = [s for _, s in zip(range(n), iter_samples(ROOT / "data/fashion-mnist/train"))]
    return np.stack([s.image for s in samples]), np.array([s.label for s in samples]), classes


def build_store(path: Path, n: int, shards: int) -> Path:
    images, labels, classes = fashion_mnist(n)
    if path.exists():
        shutil.rmtree(path)
    with StoreWriter(path, classes, shard_size=-(-len(images) // shards)) as w:
        for i, (img, y) in enumerate(zip(images, labels)):
            w.add_image(f"fmnist_{i:06d}", img, int(y))
        w.finalize()
    teacher = load_teacher("convnet3", num_classes=len(classes), image_size=28,
                           normalization={"mean": [0.286], "std": [0.353]}, arch_kwargs={"width": 32})
    relabel(path, teacher, 1, batch_size=500)
    return path


# -- the SRe2L/FKD-style baseline -------------------------------------------------------------------
def write_fkd_files(store: Store, folder: Path, batch_size: int, classes: int) -> int:
    """Per-batch label files of epoch 0 for the views our loader serves (same order, same views)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    recipe = store_recipe(store.manifest)
    n = store.num_images
    plan = epoch_plan(recipe, 0, n)
    m = store.manifest
    params = view_params_batch(recipe, 0, np.arange(n), m.image.height, m.image.width)
    gen = torch.Generator().manual_seed(0)
    batches = -(-n // batch_size)
    for b in range(batches):
        idx = plan.order[b * batch_size:(b + 1) * batch_size]
        need = np.unique(np.concatenate([idx, plan.partner[idx]]))
        pos = np.minimum(np.searchsorted(need, plan.partner[need]), len(need) - 1)
        local = np.where(need[pos] == plan.partner[need], pos, np.arange(len(need)))  # partners of partners: unused
        cols = params.take(need).to_columns(local)
        soft = torch.softmax(torch.randn(len(idx), classes, generator=gen), 1).half()
        torch.save({"index": torch.from_numpy(idx), "need": torch.from_numpy(need),
                    "params": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cols.items()},
                    "soft": soft}, folder / f"e0000_b{b:05d}.pt")
    return batches


class FKDBatches(Dataset):
    """SRe2L/FKD-style: a batch = one torch.load of its label file + per-image reads and decodes."""

    def __init__(self, store: Store, folder: Path, batches: int) -> None:
        self.root = store.path
        idx = store.index
        self.shard = idx.column("shard").to_pylist()
        self.offset = idx.column("offset").to_numpy()
        self.size = idx.column("size").to_numpy()
        self.labels = store.labels()
        self.recipe = store_recipe(store.manifest)
        self.folder, self.batches = folder, batches

    def __len__(self) -> int:
        return self.batches

    def _image(self, i: int) -> torch.Tensor:
        with open(self.root / self.shard[i], "rb") as f:
            f.seek(int(self.offset[i]))
            return to_chw(decode_image(f.read(int(self.size[i]))))

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        rec = torch.load(self.folder / f"e0000_b{b:05d}.pt", weights_only=True)
        need = rec["need"].numpy()
        params, partner = ViewBatch.from_columns({k: v.numpy() for k, v in rec["params"].items()})
        views = [render_view(self._image(int(i)), params[k], self.recipe.size) for k, i in enumerate(need)]
        pos = np.searchsorted(need, rec["index"].numpy())
        out = torch.stack([mix_views(views[k], views[partner[k]], params[k], self.recipe.mix) for k in pos])
        idx = rec["index"].numpy()
        return {"images": out, "y": torch.from_numpy(self.labels[idx]),
                "y_partner": torch.from_numpy(self.labels[need[partner[pos]]]), "soft": rec["soft"].float()}


# -- timing ------------------------------------------------------------------------------------------
def best_rate(make, n: int, repeat: int) -> float:
    """Samples/s of the best of `repeat` passes (after one warm-up pass); checks the sample count."""
    best = float("inf")
    for r in range(repeat + 1):
        t0 = time.perf_counter()
        count = sum(len(batch[1] if isinstance(batch, (list, tuple)) else batch["y"]) for batch in make())
        dt = time.perf_counter() - t0
        if count != n:
            sys.exit(f"a reader served {count} samples, expected {n}")
        if r:
            best = min(best, dt)
    return n / best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--shards", type=int, default=4, help="shards in the store (webdataset splits shards over workers)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (DataLoader workers always use 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    store = Store(build_store(args.work / "store", args.images, args.shards))
    n, bs = store.num_images, args.batch_size
    urls = [str(store.path / s) for s in store.manifest.shards]
    fkd = {c: write_fkd_files(store, args.work / f"fkd-{c}", bs, c) for c in (store.manifest.num_classes, 1000)}
    fkd_bytes = {c: sum(p.stat().st_size for p in (args.work / f"fkd-{c}").iterdir()) for c in fkd}
    print(f"setup (store, 1 epoch of distances, FKD files): {time.perf_counter() - t0:.1f} s")
    print(f"{n} Fashion-MNIST images (28x28 PNG) in {len(urls)} shards, batch {bs}, torch threads {torch.get_num_threads()}")

    def plain(w: int):
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8").to_tuple("png", "cls").batched(bs)
        return DataLoader(ds, batch_size=None, num_workers=w)

    rows = []
    for w in args.workers:
        ours = best_rate(lambda: make_loader(store, 0, bs, "dbr", workers=w), n, args.repeat)
        base = best_rate(lambda: plain(w), n, args.repeat)
        rows.append(("P2", w, "webdataset decode-only", ours, base))
        for c, batches in fkd.items():
            ds = FKDBatches(store, args.work / f"fkd-{c}", batches)
            fk = best_rate(lambda: DataLoader(ds, batch_size=None, num_workers=w), n, args.repeat)
            rows.append(("P2b", w, f"SRe2L-style torch files, {c} classes", ours, fk))

    print(f"\n{'id':4} {'workers':>7}  {'baseline':38} {'nrrstore/s':>11} {'baseline/s':>11} {'ratio':>6}")
    for pid, w, name, ours, base in rows:
        print(f"{pid:4} {w:7d}  {name:38} {ours:11.0f} {base:11.0f} {ours / base:6.2f}")
    print("\nlabel bytes read per epoch: nrrstore distances "
          f"{sum(f.bytes for f in store.manifest.files if f.kind == 'distances')} B; "
          + "; ".join(f"FKD files at {c} classes {b} B" for c, b in fkd_bytes.items()))
    print("targets: P2 ratio >= 0.8, P2b ratio >= 2")
    print(f"peak RSS (main process): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
