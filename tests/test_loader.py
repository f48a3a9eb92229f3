"""The streaming loader: exact replay of the teacher's views, splitting, resume, and bad stores."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nrrstore.errors import NrrError
from nrrstore.format import quant
from nrrstore.format.manifest import DIGEST_KEY, manifest_digest
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import DistilledDataset, make_loader
from nrrstore.train.losses import distances
from tests._builders import _same, write_fmnist_store
from tests._teacher import one_thread, teacher_path

N = 40  # 4 per class; shards of 12 and partner groups of 8, so some groups straddle two shards
RECIPE = AugRecipe(size=28, group_size=8, seed=5)


pytestmark = pytest.mark.usefixtures("single_thread")  # `teacher` comes from conftest.py


@pytest.fixture(scope="module")
def stores(tmp_path_factory, teacher) -> dict[str, Path]:
    """A plain store, the same relabelled (fp16 + soft labels, 3 epochs), and an explicit int8 one."""
    root = tmp_path_factory.mktemp("loader")
    with one_thread():
        plain = root / "plain"
        write_fmnist_store(plain, per_class=4, shard_size=12)
        dbr = root / "dbr"
        shutil.copytree(plain, dbr)
        relabel(dbr, teacher, 3, RECIPE, full_softlabels=True, epochs_per_file=2, batch_size=16)
        explicit = root / "explicit"
        shutil.copytree(plain, explicit)
        relabel(explicit, teacher, 3, RECIPE, precision="int8", mode="explicit", batch_size=16)
        v1 = root / "v1"
        shutil.copytree(plain, v1)
        relabel(v1, teacher, 2, AugRecipe(size=28, group_size=8, seed=5, version=1), batch_size=16)
    return {"plain": plain, "dbr": dbr, "explicit": explicit, "v1": v1}


def _batches(store: Path | str, workers: int = 0, **kw) -> list[dict]:
    kw.setdefault("labels", "dbr")
    return list(make_loader(store, kw.pop("epoch", 0), kw.pop("batch_size", 12), workers=workers, **kw))


def _fp16_ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.spacing(x.numpy().astype(np.float16)).astype(np.float32))


def test_teacher_reproduces_stored_labels_on_loader_views(stores, teacher) -> None:
    """For every image and epoch, 0 and 2 workers: the teacher on the loader's view gives the stored numbers."""
    runs = {}
    for workers in (0, 2):
        runs[workers] = batches = _batches(stores["dbr"], workers, normalize=False, softlabels=True, num_epochs=3)
        assert len(batches) == 3 * 4 and [b["epoch"] for b in batches] == [0] * 4 + [1] * 4 + [2] * 4
        seen: dict[int, list[int]] = {}
        for b in batches:
            seen.setdefault(b["epoch"], []).extend(b["index"].tolist())
            assert b["images"].shape[1:] == (1, 28, 28) and b["images"].dtype == torch.float32
            assert b["d_org"].dtype == torch.float32 and b["soft"].shape == (len(b["y"]), 10)
            with torch.no_grad():
                logits = teacher.model(teacher.normalize(b["images"]))
            d_org, d_aug = distances(logits, b["y"], b["y_partner"], b["lam"])
            for mine, stored in ((d_org, b["d_org"]), (d_aug, b["d_aug"])):
                assert torch.all((mine - stored).abs() <= _fp16_ulp(mine)), (mine, stored)
            assert torch.allclose(torch.softmax(logits, 1), b["soft"], atol=1e-3, rtol=0)
        assert all(sorted(v) == list(range(N)) for v in seen.values())
    assert _same(runs[0], runs[2])  # DataLoader's round robin over workers gives the 0-worker sequence
    assert _same(runs[0], _batches(stores["dbr"], 0, normalize=False, softlabels=True, num_epochs=3))
    # normalize=True is the teacher's (= the store's) normalization of the same views
    norm = _batches(stores["dbr"], 0, epoch=1)[0]
    assert torch.allclose(norm["images"], teacher.normalize(runs[0][4]["images"]), atol=1e-6)


def test_batches_follow_the_epoch_plan(stores) -> None:
    from nrrstore.replay.recipe import epoch_plan

    labels = Store(stores["dbr"]).labels()
    plan = epoch_plan(RECIPE, 2, N)
    batches = _batches(stores["dbr"], epoch=2, batch_size=16)
    assert [len(b["index"]) for b in batches] == [16, 16, 8]
    assert torch.cat([b["index"] for b in batches]).tolist() == plan.order.tolist()
    for b in batches:
        idx = b["index"].numpy()
        assert b["y"].tolist() == labels[idx].tolist()
        assert b["y_partner"].tolist() == labels[plan.partner[idx]].tolist()
        assert ((idx // 8) == (plan.partner[idx] // 8)).all()  # partners come from the same group


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_disjoint_images_and_equal_batch_counts(stores, world: int) -> None:
    full = _batches(stores["dbr"], epoch=1, batch_size=6)  # 7 batches, the last of 4 images
    per_rank = [_batches(stores["dbr"], epoch=1, batch_size=6, rank=r, world_size=world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 7 // world
    index_sets = [set(torch.cat([b["index"] for b in bs]).tolist()) for bs in per_rank]
    for i in range(world):
        for j in range(i + 1, world):
            assert not index_sets[i] & index_sets[j]
    for r, bs in enumerate(per_rank):
        assert _same(bs, [dict(b, step=k) for k, b in enumerate(full[r:(7 // world) * world:world])])


def _rank_indices(rank: int, world: int, store: str, port: int, out: str) -> None:
    """One gloo rank: the batches a loader gives when rank and world size are left out."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        idx = [b["index"].tolist() for b in DistilledDataset(store, epoch=1, batch_size=6)]
        try:
            DistilledDataset(store, epoch=1, batch_size=6, world_size=1)
            refused = ""
        except NrrError as exc:
            refused = str(exc)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"idx": idx, "refused": refused}))
    finally:
        dist.destroy_process_group()


def test_ranks_come_from_an_initialised_process_group(stores, tmp_path: Path) -> None:
    """A DDP job that does not pass rank/world_size still reads disjoint shares; a contradicting one is refused."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank_indices, args=(2, str(stores["dbr"]), port, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        expected = [b["index"].tolist() for b in _batches(stores["dbr"], epoch=1, batch_size=6, rank=r, world_size=2)]
        assert got[r]["idx"] == expected
        assert "world_size=1 contradicts" in got[r]["refused"]


def test_resume_mid_epoch_continues_with_the_next_batch(stores) -> None:
    full = _batches(stores["dbr"], epoch=0, num_epochs=2, softlabels=True)
    assert _same(_batches(stores["dbr"], epoch=0, num_epochs=2, softlabels=True, start_step=3), full[3:])
    assert _same(_batches(stores["dbr"], 2, epoch=0, num_epochs=2, softlabels=True, start_step=5), full[5:])
    one = _batches(stores["dbr"], epoch=1, start_step=2, softlabels=True)
    assert _same(one, full[6:]) and one[0]["step"] == 2 and one[0]["epoch"] == 1


def test_reading_an_epoch_touches_only_its_row_groups(stores, tmp_path: Path) -> None:
    """Destroy the column data of epoch 0 in the first file: epoch 1 (same file) still reads."""
    store = tmp_path / "s"
    shutil.copytree(stores["dbr"], store)
    path = store / "labels/distances-e0000-e0001.parquet"
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for c in range(meta.num_columns):
        col = meta.row_group(0).column(c)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        data[start:start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))
    with pytest.raises(NrrError, match="differs from the sha256 the manifest records"):
        _batches(store, epoch=1)  # the loader checks every file against the manifest first
    _declare(store, "labels/distances-e0000-e0001.parquet")  # the edit declared: the row-group reads are tested
    good = _batches(stores["dbr"], epoch=1)
    assert _same(_batches(store, epoch=1), good)
    with pytest.raises(NrrError, match="distance table"):
        _batches(store, epoch=0)


def test_epochs_beyond_stored(stores) -> None:
    with pytest.raises(NrrError, match="beyond the 3 stored"):
        DistilledDataset(stores["dbr"], epoch=3)
    with pytest.raises(NrrError, match="beyond the 3 stored"):
        DistilledDataset(stores["dbr"], epoch=1, num_epochs=3)
    with pytest.warns(UserWarning, match="replays stored epoch 1"):
        cycled = _batches(stores["dbr"], epoch=4, cycle=True)
    assert _same([dict(b, epoch=1) for b in cycled], _batches(stores["dbr"], epoch=1))
    # one-hot labels on a seeded store need no stored epoch
    assert len(_batches(stores["dbr"], epoch=7, labels="onehot")) == 4


def test_store_without_labels(stores) -> None:
    with pytest.raises(NrrError, match="no DBR distances"):
        DistilledDataset(stores["plain"], labels="dbr")
    with pytest.raises(NrrError, match="no soft labels"):
        DistilledDataset(stores["plain"], labels="kd")
    onehot = _batches(stores["plain"], labels="onehot", batch_size=40)
    assert len(onehot) == 1 and set(onehot[0]) == {"images", "y", "y_partner", "lam", "index", "epoch", "step"}


def _declare(store: Path, rel: str) -> None:
    """Make the manifest agree with an edited file (size, sha256, digest): damage a buggy writer could leave,
    which only the content checks behind the readers' pin can catch."""
    data = (store / rel).read_bytes()
    doc = json.loads((store / "manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["path"] == rel)
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    doc[DIGEST_KEY] = manifest_digest(doc)
    (store / "manifest.json").write_text(json.dumps(doc))


def test_damaged_distance_tables(stores, tmp_path: Path) -> None:
    store = tmp_path / "s"
    shutil.copytree(stores["dbr"], store)
    rel = "labels/distances-e0000-e0001.parquet"
    path = store / rel
    table = pq.read_table(path)
    # image ids that do not match the images (a permutation; same rows, wrong order)
    pf = pq.ParquetFile(path)
    groups = [pf.read_row_group(g) for g in range(pf.metadata.num_row_groups)]
    with pq.ParquetWriter(path, pf.schema_arrow) as w:
        for t in groups:
            w.write_table(t.set_column(1, pf.schema_arrow.field("image"), pa.array(t.column("image").to_numpy()[::-1].copy())))
    with pytest.raises(NrrError, match="differs from the sha256 the manifest records"):
        _batches(store, epoch=1)  # undeclared: the checksum pass refuses it before its content is read
    _declare(store, rel)
    with pytest.raises(NrrError, match="image ids do not match"):
        _batches(store, epoch=1)
    # a table with a missing image
    pq.write_table(table.slice(0, N - 1), path)
    _declare(store, rel)
    with pytest.raises(NrrError, match="image ids do not match"):
        _batches(store, epoch=0)
    # a truncated file
    shutil.copy(stores["dbr"] / rel, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _declare(store, rel)
    with pytest.raises(NrrError, match="unreadable distance table"):
        _batches(store, epoch=0)
    # a truncated image shard
    shard = store / "images/shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(NrrError, match="differs from the sha256 the manifest records"):
        _batches(store, epoch=2, labels="onehot")
    _declare(store, "images/shard-000001.tar")  # declared: the shard reader's own check must catch it
    with pytest.raises(NrrError, match="truncated shard"):
        _batches(store, epoch=2, labels="onehot")


def test_explicit_store_replays_the_same_views(stores) -> None:
    """Explicit columns go through the same render path: the same views as the seeded store."""
    seeded = _batches(stores["dbr"], epoch=2)
    explicit = _batches(stores["explicit"], epoch=2)
    qmax = Store(stores["explicit"]).manifest.labels["distances"]["quant"]["max"]
    bound = quant.max_abs_log_error(qmax)
    for a, b in zip(seeded, explicit, strict=True):
        for k in ("images", "y", "y_partner", "lam", "index"):
            assert torch.equal(a[k], b[k])
        for k in ("d_org", "d_aug"):  # fp16 vs int8 codes of the same teacher numbers
            err = (torch.log1p(a[k].double()) - torch.log1p(b[k].double())).abs()
            assert err.max() <= bound + 1e-3


def test_store_over_http_range_requests(stores, tmp_path: Path) -> None:
    """A store served over http(s) streams through fsspec: ranged reads, the same batches."""
    import shutil

    from tests._remote import RangeHTTP

    www = tmp_path / "www"
    shutil.copytree(stores["dbr"], www / "dbr")
    server = RangeHTTP(www)
    try:
        url = f"{server.url}/dbr"
        remote = _batches(url, epoch=1)
        assert _same(remote, _batches(stores["dbr"], epoch=1))
        # only the file holding epoch 1 is fetched (in a file this small pyarrow's 64 KiB footer read is all of it)
        assert server.sent["/dbr/labels/distances-e0000-e0001.parquet"] > 0
        assert "/dbr/labels/distances-e0002-e0002.parquet" not in server.sent
        shards = sum(v for k, v in server.sent.items() if k.startswith("/dbr/images/"))
        assert shards <= sum(p.stat().st_size for p in (stores["dbr"] / "images").iterdir())  # ranges, not re-reads
        assert _same(_batches(url, 2, epoch=0, start_step=1), _batches(stores["dbr"], epoch=0, start_step=1))
        with pytest.raises(NrrError, match="no such store"):
            DistilledDataset(url + "-missing")
        with pytest.raises(NrrError, match="read-only"):
            relabel(url, teacher_path(), 1)
    finally:
        server.stop()


def test_rgb_photos_replay(tmp_path: Path) -> None:
    """RGB crops of real photos (3-channel normalization, HWC -> CHW) replay exactly too."""
    from nrrstore.format.writer import StoreWriter
    from tests._real import photo_crops

    store = tmp_path / "rgb"
    with StoreWriter(store, ["astronaut", "coffee", "chelsea"], shard_size=5) as w:
        for i, (img, c) in enumerate(photo_crops(12, size=32)):
            w.add_image(f"img_{i}", img, c)
        w.finalize()
    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    t = load_teacher("convnet3", num_classes=3, image_size=24, normalization=norm, arch_kwargs={"width": 8})
    relabel(store, t, 2, AugRecipe(size=24, group_size=4, mix="mixup"), precision="fp32", batch_size=8)
    for b in _batches(store, epoch=1, batch_size=5):
        assert b["images"].shape[1:] == (3, 24, 24)
        with torch.no_grad():
            logits = t.model(b["images"])  # the store's normalization is the teacher's
        d_org, d_aug = distances(logits, b["y"], b["y_partner"], b["lam"])
        assert torch.allclose(d_org, b["d_org"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(d_aug, b["d_aug"], rtol=1e-5, atol=1e-6)


def test_workers_give_the_same_batches_and_decode_each_image_once(stores) -> None:
    """0, 1 and 2 workers: the same batches; one epoch decodes every image exactly once."""
    runs = {}
    for workers in (0, 1, 2):
        loader = make_loader(stores["dbr"], 1, 12, "dbr", workers=workers, softlabels=True)
        runs[workers] = list(loader)
        assert loader.decoded == N and len(runs[workers]) == len(loader) == 4
    assert _same(runs[0], runs[1]) and _same(runs[0], runs[2])
    # Without a cache each epoch decodes each image once; with one, later epochs decode nothing.
    for workers in (0, 2):
        loader = make_loader(stores["dbr"], 0, 12, "dbr", workers=workers, num_epochs=3, cache_mb=0)
        assert len(list(loader)) == 12 and loader.decoded == 3 * N
    loader = make_loader(stores["dbr"], 0, 12, "dbr", num_epochs=3)
    assert len(list(loader)) == 12 and loader.decoded == N


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_share_one_decode_cache(stores, workers: int) -> None:
    """Issue 28: decoded groups go to memory that the workers share, so whatever worker a group goes to in a
    later epoch (item j goes to worker j % workers; the group order changes every epoch) it decodes nothing.
    With a per-process cache each worker hit about 1/workers of the time."""
    loader = make_loader(stores["dbr"], 0, 12, "dbr", workers=workers, num_epochs=3)
    shared = list(loader)
    assert len(shared) == 12 and loader.decoded == N  # the first epoch decodes each image once, later ones none
    alone = make_loader(stores["dbr"], 0, 12, "dbr", workers=0, num_epochs=3, cache_mb=0)
    assert _same(shared, list(alone))  # the same batches as decoding every time


def test_the_shared_cache_keeps_the_first_blocks_that_fit(stores, tmp_path) -> None:
    from nrrstore.replay.stream import ImageBlocks

    store = Store(stores["dbr"])
    blocks = ImageBlocks(store, 8, cache_mb=1)
    assert blocks._shared is not None and blocks._shared.count == -(-N // 8)  # the whole store fits in 1 MB
    first = [blocks.block_pixels(b) for b in range(3)]
    again = [blocks.block_pixels(b) for b in range(3)]
    assert blocks.decoded == 24 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    lru = ImageBlocks(store, 8, cache_mb=1, shared=False)
    assert all(torch.equal(lru.block_pixels(b), first[b]) for b in range(3))
    tiny = ImageBlocks(store, 8, cache_mb=0)
    assert tiny._shared is None  # nothing fits: no region, every block decoded
    # Nothing lies in /dev/shm: the region has no name (it is reached through its creator's descriptor).
    assert blocks._shared._fd is not None and os.fstat(blocks._shared._fd[1]).st_nlink == 0


def test_decode_cache_counts_real_bytes(stores) -> None:
    from nrrstore.replay.stream import BLOCK_OVERHEAD, ImageBlocks

    blocks = ImageBlocks(Store(stores["dbr"]), 8, cache_mb=1, shared=False)  # the per-process LRU
    blocks.cap = 3 * (8 * 28 * 28 + BLOCK_OVERHEAD)  # room for three groups of eight 28x28 images
    for b in range(5):
        px = blocks.block_pixels(b)
        assert px.dtype == torch.uint8 and px.shape == (8, 1, 28, 28)
    assert len(blocks._cache) == 3 and blocks.cached_bytes <= blocks.cap
    assert blocks.cached_bytes == sum(t.untyped_storage().nbytes() + BLOCK_OVERHEAD for t in blocks._cache.values())
    assert blocks.decoded == 40
    blocks.block_pixels(4)
    assert blocks.decoded == 40  # a hit


def test_version_1_store_replays_with_its_own_renderer(stores, teacher) -> None:
    """A store labelled by the per-view renderer (recipe version 1) replays exactly, with any worker count."""
    from nrrstore.replay.recipe import epoch_plan
    from nrrstore.replay.render_v1 import render_batch_v1
    from nrrstore.train.loader import to_chw

    store = Store(stores["v1"])
    assert store.manifest.augmentation is not None
    recipe = AugRecipe.from_dict(store.manifest.augmentation)
    assert recipe.version == 1
    for workers in (0, 2):
        batches = _batches(stores["v1"], workers, epoch=1, normalize=False)
        for b in batches:
            with torch.no_grad():
                logits = teacher.model(teacher.normalize(b["images"]))
            d_org, d_aug = distances(logits, b["y"], b["y_partner"], b["lam"])
            for mine, stored in ((d_org, b["d_org"]), (d_aug, b["d_aug"])):
                assert torch.all((mine - stored).abs() <= _fp16_ulp(mine))
    imgs = [to_chw(store.get(i).pixels) for i in range(N)]
    plan = epoch_plan(recipe, 1, N)
    want = render_batch_v1(imgs, batches[0]["index"].numpy(), plan, recipe, 1)[0]
    assert torch.equal(batches[0]["images"], want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bad_device(stores) -> None:
    with pytest.raises(NrrError, match="CUDA is not available"):
        make_loader(stores["dbr"], device="cuda")
    with pytest.raises(NrrError, match="unknown device"):
        make_loader(stores["dbr"], device="gpu0")


def test_output_pool_reuses_only_released_batches() -> None:
    from nrrstore.replay.stream import OutputPool

    pool = OutputPool(torch.device("cpu"), size=2)
    a = pool.get((2, 3))
    a.fill_(1.0)
    b = pool.get((2, 3))  # a is still held: a new buffer
    assert a.data_ptr() != b.data_ptr()
    ptr = a.data_ptr()
    del a
    c = pool.get((1, 3))  # a was released: its memory comes back
    assert c.data_ptr() == ptr and c.shape == (1, 3)
    assert pool.get((2, 3)).data_ptr() not in (ptr, b.data_ptr())  # both held: a fresh one (pool is full)
