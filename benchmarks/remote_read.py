"""R1: reading one epoch of a store over S3 costs at most 1.3x reading it locally, in requests and in seconds.

The store: ``--images`` real 224 px RGB JPEGs (crops of scikit-image's photos, `photos224.py`), 256 per
shard, with ``--epochs`` epochs of DBR distances in one Parquet file (one row group per epoch). One epoch
is read the way training reads it: ``make_loader(store, epoch=E)`` to the last batch (decode, render,
normalize), once from the local folder and once from ``s3://`` on moto's S3 server, which runs in its own
process on 127.0.0.1 (so it does not compete with the loader for the GIL). Runs alternate and the median
of ``--repeat`` is reported.

Requests: over S3, the HTTP requests the loader sends (counted by a botocore event hook on s3fs's client);
locally, the read calls it makes on the store's files (counted by wrapping every file it opens, pyarrow's
included). The figure each side: ``remote / local``; the target is <= 1.3 for both.

    python benchmarks/remote_read.py [--images 2048] [--epochs 20] [--repeat 3] [--reuse] [--json]
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch
from photos224 import photo_jpegs, write_store

from nrrstore.format import fs
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.train.loader import make_loader

WORK = ROOT / "benchmarks" / "_work" / "remote_read"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def build(images: int, epochs: int, reuse: bool = False) -> Path:
    """A relabelled 224 px JPEG store (the distances' values do not matter for reading speed)."""
    store = WORK / "store"
    if reuse and (store / "manifest.json").is_file():
        from nrrstore.format import Store

        st = Store(store)
        if st.num_images == images and st.num_epochs == epochs:
            return store
    if store.exists():
        shutil.rmtree(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    write_store(store, photo_jpegs(images, classes=6), 6, shard_size=256)
    teacher = load_teacher("convnet3", num_classes=6, image_size=224, normalization=IMAGENET,
                           arch_kwargs={"width": 8})
    relabel(store, teacher, epochs, batch_size=256, epochs_per_file=epochs)
    return store


class MotoProcess:
    """moto's S3 server as a child process on a free loopback port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def upload(store: Path, endpoint: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                          region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for p in sorted(store.rglob("*")):
        if p.is_file():
            client.put_object(Bucket="bench", Key=f"store/{p.relative_to(store).as_posix()}", Body=p.read_bytes())
    return "s3://bench/store"


# -- counting ------------------------------------------------------------------------------------------
class LocalReads:
    """Counts read calls on the files under ``root``: Python's own opens and pyarrow's (given paths)."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = str(root.resolve()), 0

    def __enter__(self) -> Self:
        import pyarrow.parquet as pq

        counter = self
        real_open, real_read_table, real_pf = builtins.open, pq.read_table, pq.ParquetFile.__init__

        class Counting(io.FileIO):
            def readinto(self, b):  # every buffered read, seek+read and readall ends here
                counter.count += 1
                return super().readinto(b)

        def counting_open(file, mode="r", *args, **kwargs):
            if "b" in mode and "r" in mode and isinstance(file, (str, os.PathLike)) and \
                    os.path.abspath(file).startswith(self.root):
                return io.BufferedReader(Counting(file, "r"))
            return real_open(file, mode, *args, **kwargs)

        def wrap(source):
            return counting_open(source, "rb") if isinstance(source, (str, os.PathLike)) else source

        def read_table(source, *args, **kwargs):
            return real_read_table(wrap(source), *args, **kwargs)

        def parquet_file(pf, source, *args, **kwargs):
            real_pf(pf, wrap(source), *args, **kwargs)

        self._undo = [(builtins, "open", real_open), (pq, "read_table", real_read_table),
                      (pq.ParquetFile, "__init__", real_pf)]
        builtins.open, pq.read_table, pq.ParquetFile.__init__ = counting_open, read_table, parquet_file
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, value in self._undo:
            setattr(owner, name, value)


class S3Requests:
    """Counts the HTTP requests s3fs's botocore client sends (a ``before-send`` event hook)."""

    def __init__(self, url: str) -> None:
        self.requests: Counter[str] = Counter()
        filesystem, _ = fs.filesystem(fs.Url(url))
        filesystem.connect(refresh=True)
        filesystem.s3.meta.events.register("before-send.s3", self._count)

    def _count(self, request, **kwargs) -> None:
        self.requests[request.method] += 1

    @property
    def count(self) -> int:
        return sum(self.requests.values())


# -- the measurement ----------------------------------------------------------------------------------
def read_epoch(store: str, epoch: int, batch: int) -> int:
    n = 0
    for b in make_loader(store, epoch=epoch, batch_size=batch, labels="dbr"):
        n += len(b["index"])
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--epoch", type=int, default=None, help="the epoch read (default: the middle one)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="keep benchmarks/_work's store when it has these sizes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.epoch is None:
        args.epoch = args.epochs // 2
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    os.environ.update(CREDENTIALS)
    store = build(args.images, args.epochs, args.reuse)
    server = MotoProcess()
    try:
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        url = upload(store, server.endpoint)
        read_epoch(url, args.epoch, args.batch)  # warm both (imports, the client's connection)
        read_epoch(str(store), args.epoch, args.batch)
        local_s, remote_s = [], []
        local_reads = remote_requests = 0
        methods: Counter[str] = Counter()
        for _ in range(args.repeat):
            with LocalReads(store) as reads:
                t0 = time.perf_counter()
                assert read_epoch(str(store), args.epoch, args.batch) == args.images
                local_s.append(time.perf_counter() - t0)
            local_reads = reads.count
            counter = S3Requests(url)
            t0 = time.perf_counter()
            assert read_epoch(url, args.epoch, args.batch) == args.images
            remote_s.append(time.perf_counter() - t0)
            remote_requests, methods = counter.count, counter.requests
    finally:
        server.stop()
    table = store / "labels" / f"distances-e0000-e{args.epochs - 1:04d}.parquet"
    result = {
        "images": args.images, "epochs_stored": args.epochs, "epoch_read": args.epoch, "batch": args.batch,
        "store_bytes": sum(p.stat().st_size for p in store.rglob("*") if p.is_file()),
        "distance_file_bytes": table.stat().st_size,
        "local_s": round(statistics.median(local_s), 3), "s3_s": round(statistics.median(remote_s), 3),
        "local_reads": local_reads, "s3_requests": remote_requests, "s3_requests_by_method": dict(methods),
    }
    result["seconds_ratio"] = round(result["s3_s"] / result["local_s"], 3)
    result["requests_ratio"] = round(remote_requests / max(1, local_reads), 3)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"one epoch of {args.images} 224 px JPEGs ({result['store_bytes'] / 1e6:.1f} MB store, "
          f"{args.epochs} epochs of distances in {result['distance_file_bytes'] / 1e3:.0f} kB)")
    print(f"  local : {result['local_s']:.2f} s, {local_reads} read calls")
    print(f"  s3    : {result['s3_s']:.2f} s, {remote_requests} requests {dict(methods)}")
    print(f"  s3 / local: seconds {result['seconds_ratio']:.2f}x, requests {result['requests_ratio']:.2f}x "
          f"(target <= 1.3x)")


if __name__ == "__main__":
    main()
