"""The local cache of a remote store's shards (issue 17, item 7; U4): a second epoch over S3 reads no shard
bytes from S3; a changed store is never served stale; the cap evicts least recently used entries; processes
share entries; a corrupt entry is fetched again.

Requests are counted at moto's S3 server (``tests/_remote.py``): a GET of a ``.tar`` key is a read of shard
bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.manifest import FileEntry
from nrrstore.format.reader import Store
from nrrstore.format.shard_cache import DEFAULT_CACHE_BYTES, ShardCache, shard_cache
from nrrstore.train.loader import make_loader
from nrrstore.units import parse_bytes
from nrrstore_cli import train_cmd
from tests._builders import _same, make_app, write_fmnist_store
from tests._remote import upload_folder
from tests._teacher import one_thread
from tests.conftest import FMNIST_SUBSET

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Two versions of one store: 40 images in 4 shards of 12, and the same images in 4 shards of 10 (the
    same shard names, other bytes and another manifest)."""
    root = tmp_path_factory.mktemp("cache")
    with one_thread():
        write_fmnist_store(root / "a", per_class=4, shard_size=12)
        write_fmnist_store(root / "b", per_class=4, shard_size=10)
    return {"a": root / "a", "b": root / "b"}


def upload(moto_s3, s3: str, folder: Path, prefix: str = "st") -> str:
    upload_folder(moto_s3.endpoint, folder, s3.removeprefix("s3://"), prefix)
    return f"{s3}/{prefix}"


def shard_gets(moto_s3) -> int:
    """GET requests for shard objects (reads of shard bytes) since the counter was last cleared."""
    return sum(n for (method, path), n in moto_s3.requests.items() if method == "GET" and path.endswith(".tar"))


def batches(store: str | Path | Store, epoch: int = 0, **kw) -> list[dict]:
    return list(make_loader(store, epoch, 12, "onehot", **kw))


def shard_entries(st: Store) -> list[FileEntry]:
    """The manifest entries of the store's shards, in store order."""
    found = [e for s in st.manifest.shards if (e := st.manifest.file(s)) is not None]
    assert len(found) == len(st.manifest.shards)
    return found


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


# -- U4 ------------------------------------------------------------------------------------------------
def test_second_epoch_reads_no_shard_bytes_from_s3(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    want = batches(stores["a"], num_epochs=2)  # local, no cache
    assert _same(batches(url, num_epochs=2), want)  # remote, no cache
    cache = tmp_path / "cache"

    moto_s3.requests.clear()
    per_epoch: dict[int, int] = {}
    got = []
    for b in make_loader(url, 0, 12, "onehot", num_epochs=2, cache_dir=cache):  # workers=0: reads happen in order
        got.append(b)
        per_epoch[b["epoch"]] = shard_gets(moto_s3)  # shard GETs so far, at each epoch's last batch
    first, second = per_epoch[0], per_epoch[1] - per_epoch[0]
    print(f"U4: shard GETs from S3: epoch 1 {first}, epoch 2 {second}")
    assert first == len(Store(url).manifest.shards) and second == 0
    assert _same(got, want)  # the same samples as without a cache
    st = Store(url)
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.tar")) == \
        [f"{st.digest}/{s}" for s in st.manifest.shards]
    assert leftovers(cache) == []  # no temporary or lock files

    # a later run (another loader, another epoch, 2 decoding workers sharing the cache) reads none either
    moto_s3.requests.clear()
    assert _same(batches(url, 1, cache_dir=cache, workers=2), batches(stores["a"], 1))
    assert shard_gets(moto_s3) == 0


def test_workers_fill_a_cache_together_each_shard_once(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    moto_s3.requests.clear()
    assert _same(batches(url, cache_dir=tmp_path / "c", workers=2), batches(stores["a"]))
    assert shard_gets(moto_s3) == 4  # one fill per shard, whichever worker needed it first
    assert leftovers(tmp_path / "c") == []


def test_environment_names_the_cache_and_local_stores_are_not_cached(s3: str, moto_s3, stores, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = upload(moto_s3, s3, stores["a"])
    assert shard_cache() is None
    monkeypatch.setenv("NRRSTORE_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("NRRSTORE_CACHE_SIZE", "1MiB")
    cache = shard_cache()
    assert cache is not None and cache.root == tmp_path / "env" and cache.max_bytes == 2**20
    assert ShardCache(tmp_path).max_bytes == DEFAULT_CACHE_BYTES == parse_bytes("20GiB")
    batches(url)
    assert len(list((tmp_path / "env").rglob("*.tar"))) == 4
    batches(stores["a"], cache_dir=tmp_path / "local")  # a local store is read in place
    assert not (tmp_path / "local").exists()
    opened = Store(url)
    batches(opened, cache_dir=tmp_path / "arg")  # the argument wins over the environment
    assert len(list((tmp_path / "arg").rglob("*.tar"))) == 4 and opened.cache is None  # the caller's Store as it was


# -- (b) a changed store -------------------------------------------------------------------------------
def test_a_changed_store_is_never_served_from_the_old_entries(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    cache = tmp_path / "cache"
    old = Store(url)
    assert _same(batches(url, cache_dir=cache), batches(stores["a"]))
    upload(moto_s3, s3, stores["b"])  # rewritten in place: the same shard names, other bytes, a new manifest
    new = Store(url)
    assert new.digest != old.digest and new.manifest.shards == old.manifest.shards
    moto_s3.requests.clear()
    assert _same(batches(url, cache_dir=cache), batches(stores["b"]))
    assert shard_gets(moto_s3) == 4  # fetched again, under the new digest
    assert {p.name for p in cache.iterdir()} == {old.digest, new.digest}
    for s in new.manifest.shards:
        assert (cache / new.digest / s).read_bytes() == (stores["b"] / s).read_bytes()
        assert (cache / old.digest / s).read_bytes() == (stores["a"] / s).read_bytes()


# -- (c) the cap ---------------------------------------------------------------------------------------
def test_the_cap_evicts_least_recently_used_entries(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    st = Store(url)
    e0, e1, e2 = shard_entries(st)[:3]
    cap = 2 * max(e.bytes for e in (e0, e1, e2)) + 100  # two entries fit, three do not
    cache = ShardCache(tmp_path / "c", cap)
    root = tmp_path / "c" / st.digest

    def read(entry: FileEntry) -> None:
        data = cache.read_range(fs.Url(f"{url}/{entry.path}"), st.digest, entry, 0, entry.bytes)
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        time.sleep(0.05)  # file times tick coarsely: keep the reads in order

    read(e0)
    read(e1)
    read(e0)  # a hit: e1 is now the least recently used
    (root / "images" / ".tmp-99999-shard-000003.tar").write_bytes(b"a killed fill's leftover")
    read(e2)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["images", e0.path, e2.path]
    assert cache.total_bytes() <= cap

    # a cap below one shard: each entry is used, then evicted by the next fill
    tiny = ShardCache(tmp_path / "t", 1)
    for entry in (e0, e1):
        assert tiny.read_range(fs.Url(f"{url}/{entry.path}"), st.digest, entry, 10, 5) == \
            (stores["a"] / entry.path).read_bytes()[10:15]
        assert [p.name for p, _, _ in tiny.entries()] == [Path(entry.path).name]
    assert leftovers(tmp_path) == []


def test_sizes_and_bad_caches_are_one_line(stores, tmp_path: Path) -> None:
    assert [parse_bytes(s) for s in ("500", "1kB", "1.5MB", "2GiB", "3 mib", 7)] == [500, 1000, 1_500_000, 2 * 2**30,
                                                                                    3 * 2**20, 7]
    for bad in ("lots", "5 parsecs", "-1GB", ""):
        with pytest.raises(NrrError, match="is not a size"):
            parse_bytes(bad, "cache size")
    with pytest.raises(NrrError, match="must be a local folder"):
        ShardCache("s3://bucket/cache")
    res = CliRunner().invoke(make_app(train_cmd), ["train-student", str(stores["a"]), "--val", str(FMNIST_SUBSET / "test"),
                                                   "--labels", "onehot", "--cache-size", "lots"])
    # a usage error naming the option (exit 2), before any work
    assert res.exit_code == 2 and "--cache-size" in res.output and "'lots' is not a size (e.g. 500MB" in res.output, \
        res.output


# -- (d) processes sharing an entry --------------------------------------------------------------------
def _fill_in_process(root: str, url: str, key: str, entry: dict, barrier, out) -> None:
    e = FileEntry(**entry)
    fetch = fs.read_range

    def slow_fetch(*args):  # a slow download: the other process comes while this one holds the entry's lock
        time.sleep(0.5)
        return fetch(*args)

    fs.read_range = slow_fetch
    barrier.wait()
    data = ShardCache(root, 10**9).read_range(fs.Url(url), key, e, 0, e.bytes)
    out.put(hashlib.sha256(data).hexdigest())


def test_two_processes_fill_one_entry(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    st = Store(url)
    entry = shard_entries(st)[0]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    args = (str(tmp_path / "c"), f"{url}/{entry.path}", st.digest, vars(entry), barrier, out)
    moto_s3.requests.clear()
    procs = [ctx.Process(target=_fill_in_process, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [out.get(timeout=5) for _ in procs] == [entry.sha256] * 2
    assert shard_gets(moto_s3) == 1  # one downloaded; the other waited for its entry and read it
    assert leftovers(tmp_path / "c") == []
    assert (tmp_path / "c" / st.digest / entry.path).read_bytes() == (stores["a"] / entry.path).read_bytes()


# -- (e) corrupt entries, changed objects --------------------------------------------------------------
def test_a_corrupt_entry_is_fetched_again(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    st = Store(url)
    entry = shard_entries(st)[1]
    shard = fs.Url(f"{url}/{entry.path}")
    good = (stores["a"] / entry.path).read_bytes()
    path = ShardCache(tmp_path).entry_path(st.digest, entry.path)
    for damage in (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], lambda b: b[:-512]):
        ShardCache(tmp_path).read_range(shard, st.digest, entry, 0, 1)
        path.write_bytes(damage(path.read_bytes()))  # a bit flipped, or cut short
        moto_s3.requests.clear()
        assert ShardCache(tmp_path).read_range(shard, st.digest, entry, 0, entry.bytes) == good  # a new process
        assert shard_gets(moto_s3) == 1 and path.read_bytes() == good

    # an object that no longer matches the manifest is refused in one line, and nothing is cached
    path.unlink()
    bucket, _, key = shard.removeprefix("s3://").partition("/")
    import boto3

    boto3.client("s3", endpoint_url=moto_s3.endpoint).put_object(Bucket=bucket, Key=key, Body=good[:-1] + b"!")
    with pytest.raises(NrrError, match="does not match the store's manifest") as err:
        ShardCache(tmp_path).read_range(shard, st.digest, entry, 0, 1)
    assert err.value.path == shard and "\n" not in str(err.value)
    assert not path.exists() and leftovers(tmp_path) == []


# -- the command line ----------------------------------------------------------------------------------
def test_train_student_caches_a_remote_store(s3: str, moto_s3, stores, tmp_path: Path) -> None:
    url = upload(moto_s3, s3, stores["a"])
    moto_s3.requests.clear()
    res = CliRunner().invoke(make_app(train_cmd), [
        "train-student", url, "--val", str(FMNIST_SUBSET / "test"), "--epochs", "3", "--labels", "onehot",
        "--batch-size", "20", "--cache-dir", str(tmp_path / "c"), "--cache-size", "10MB", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs"] == 3
    assert shard_gets(moto_s3) == 4  # three epochs, each shard read from S3 once
    assert len(list((tmp_path / "c").rglob("*.tar"))) == 4


def test_evaluate_hands_the_cache_to_its_students(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nrrstore.evaluation
    from nrrstore_cli import evaluate_cmd

    seen: list[Any] = []

    def fake(*args, **kwargs):
        seen.append(kwargs["cache"])
        raise NrrError(None, "stopped here")

    monkeypatch.delenv("NRRSTORE_CACHE_DIR", raising=False)
    monkeypatch.setenv("NRRSTORE_CACHE_SIZE", "1GB")
    monkeypatch.setattr(nrrstore.evaluation, "evaluate_store", fake)
    app = make_app(evaluate_cmd)
    res = CliRunner().invoke(app, ["evaluate", "s3://b/st", "--val", str(tmp_path), "--work", str(tmp_path / "w"),
                                   "--cache-dir", str(tmp_path / "c"), "--cache-size", "2GiB"])
    assert res.exit_code == 1 and "stopped here" in res.stderr, res.output
    assert [(c.root, c.max_bytes) for c in seen] == [(tmp_path / "c", 2 * 2**30)]
    res = CliRunner().invoke(app, ["evaluate", "s3://b/st", "--val", str(tmp_path), "--work", str(tmp_path / "w")])
    assert res.exit_code == 1 and seen[-1] is None  # no --cache-dir and no $NRRSTORE_CACHE_DIR: no cache
    monkeypatch.setenv("NRRSTORE_CACHE_DIR", str(tmp_path / "e"))
    res = CliRunner().invoke(app, ["evaluate", "s3://b/st", "--val", str(tmp_path), "--work", str(tmp_path / "w")])
    last = seen[2]
    assert res.exit_code == 1 and last is not None and (last.root, last.max_bytes) == (tmp_path / "e", 10**9)
    res = CliRunner().invoke(app, ["evaluate", "s3://b/st", "--val", str(tmp_path), "--cache-size", "big"])
    assert res.exit_code == 2 and "'big' is not a size" in res.output and len(seen) == 3
