"""Benchmark `prepare idx` and shard reading on the full Fashion-MNIST training set.

Three timings in one run, on the same shards: writing with `prepare_idx` (PNG encode + tar), reading
back with `nrrstore.sources.iter_samples` (strict: every label and member checked), and a plain
`webdataset.WebDataset(urls).decode("l8")` read (uint8 grey, the same output type as ours; "l" would
add a float conversion to webdataset's side only). Both reads are verified against the IDX arrays.

    python benchmarks/prepare.py                 # all 60000 images
    python benchmarks/prepare.py --limit 5000    # a quick check
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from nrrstore.sources import iter_samples, prepare_idx, read_idx_pair, resolve_shards

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
WORK = Path(__file__).resolve().parent / "_work" / "prepare"


def _index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def _verify(name: str, got: list[tuple[str, np.ndarray, int]], images: np.ndarray, labels: np.ndarray, n: int) -> None:
    if len(got) != n:
        sys.exit(f"{name}: read {len(got)} samples, wrote {n}")
    for key, image, label in got:
        i = _index(key)
        if not np.array_equal(image, images[i]) or label != labels[i]:
            sys.exit(f"{name}: sample {key} differs from the IDX source")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEBIAN / "train-images-idx3-ubyte.gz")
    ap.add_argument("--labels", type=Path, default=DEBIAN / "train-labels-idx1-ubyte.gz")
    ap.add_argument("--out", type=Path, default=WORK, help="work folder (replaced on each run)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--gzip", action="store_true", help="write .tar.gz shards")
    ap.add_argument("--repeat", type=int, default=2, help="read passes per reader (best is reported)")
    args = ap.parse_args(argv)
    for p in (args.images, args.labels):
        if not p.is_file():
            sys.exit(f"{p}: not found (apt-get install dataset-fashion-mnist)")

    t0 = time.perf_counter()
    images, labels = read_idx_pair(args.images, args.labels)
    t_idx = time.perf_counter() - t0
    n = min(len(images), args.limit or len(images))

    out = args.out / "shards"
    args.out.mkdir(parents=True, exist_ok=True)  # outputs' parent folders must exist
    t0 = time.perf_counter()
    summary = prepare_idx(images, labels, out, limit=n, shard_size=args.shard_size, gzip=args.gzip, overwrite=True)
    t_write = time.perf_counter() - t0
    urls = resolve_shards(out)

    def read_ours() -> list[tuple[str, np.ndarray, int]]:
        return [(s.key, s.image, s.label) for s in iter_samples(urls, num_classes=summary["num_classes"])]

    def read_plain() -> list[tuple[str, np.ndarray, int]]:
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8")
        return [(s["__key__"], s["png"], s["cls"]) for s in ds]

    best = {"ours": float("inf"), "plain": float("inf")}
    for _ in range(max(1, args.repeat)):
        for name, fn in (("ours", read_ours), ("plain", read_plain)):  # alternate: same cache state for both
            t0 = time.perf_counter()
            got = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            _verify(name, got, images, labels, n)
            del got

    rows = [
        ("read IDX (gzip) into numpy", len(images), t_idx),
        ("write: prepare_idx (png + tar)", n, t_write),
        ("read: nrrstore iter_samples", n, best["ours"]),
        ('read: webdataset .decode("l8")', n, best["plain"]),
    ]
    print(f"Fashion-MNIST {args.images.name}: {n} images, {len(urls)} shards, "
          f"{summary['bytes'] / 1e6:.1f} MB{' gzip' if args.gzip else ''}")
    print(f"{'step':34} {'images':>8} {'seconds':>9} {'images/s':>10}")
    for name, count, secs in rows:
        print(f"{name:34} {count:8d} {secs:9.2f} {count / secs:10.0f}")
    print(f"read ratio nrrstore / webdataset (throughput): {best['plain'] / best['ours']:.2f}")
    print("verified: pixels and labels of both reads equal the IDX arrays")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
