"""convert-softlabels --format sre2l: SRe2L relabel folders written here exactly as SRe2L writes them.

The fixture renders each view the SRe2L way (crop from the stored fractions with PIL's rounding, resize,
flip, then CutMix/MixUp across the batch with a permutation), feeds it to a small trained teacher and
saves ``[coords, flip, partner, lam, box, logits]`` per batch, with the image order drawn by a real
DataLoader over a seeded RandomSampler. The converted store's loader must then replay views on which
the same teacher reproduces the stored distances.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from PIL import Image
from typer.testing import CliRunner

from nrrstore.convert.sre2l import WORK_PREFIX, convert_sre2l, load_batch, safe_torch_load
from nrrstore.errors import NrrError, ResumeMismatchError
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.sources import prepare_imagefolder
from nrrstore.train.loader import DistilledDataset, read_epoch_labels
from nrrstore.train.losses import distances
from tests._builders import Fixture, du, make_app, make_fixture
from tests._real import fmnist
from tests._teacher import MEAN, STD, one_thread

NORM = {"mean": [MEAN], "std": [STD]}


def expected_distances(fx: Fixture, epoch: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    n = len(fx.images)
    d_org, d_aug = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    for pos, _, _, perm, lam, _, logits in fx.records[epoch]:
        partner = pos if perm is None else pos[perm]
        a, c = distances(logits.float() / temperature, torch.from_numpy(fx.y[pos]), torch.from_numpy(fx.y[partner]),
                         1.0 if lam is None else lam)
        d_org[pos], d_aug[pos] = a.numpy(), c.numpy()
    return d_org, d_aug


pytestmark = pytest.mark.usefixtures("single_thread")  # `teacher` comes from conftest.py


@pytest.fixture(scope="module")
def cutmix_fx(tmp_path_factory, teacher) -> Fixture:
    with one_thread():
        return make_fixture(tmp_path_factory.mktemp("cutmix"), ["cutmix", "none", "cutmix"], teacher=teacher)


@pytest.fixture(scope="module")
def cutmix_store(tmp_path_factory, cutmix_fx) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "store"
    with one_thread():
        summary = convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, out, normalization=NORM, epochs_per_file=2)
    return out, summary


def no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in folder.iterdir() if p.name.startswith((WORK_PREFIX, ".tmp-", ".old-"))]
    assert hidden == []


# -- conversion ---------------------------------------------------------------------------------------
def test_converted_store_holds_the_files_views_and_distances(cutmix_fx: Fixture, cutmix_store) -> None:
    out, summary = cutmix_store
    assert verify_store(out) == []
    no_leftovers(out.parent)
    st = Store(out)
    m = st.manifest
    n = len(cutmix_fx.images)
    assert (summary["images"], summary["epochs"], summary["batch_size"], summary["views"]) == (n, 3, 16, 3 * n)
    assert m.labels["distances"]["mode"] == "explicit" and m.labels["distances"]["epochs"] == 3
    assert [f["path"] for f in m.labels["distances"]["files"]] == ["labels/distances-e0000-e0001.parquet",
                                                                   "labels/distances-e0002-e0002.parquet"]
    assert m.augmentation is not None and m.augmentation["mix"] == "cutmix" and m.augmentation["size"] == 28
    assert m.source["bytes"] == du(cutmix_fx.labels_dir) and m.source["images"]["bytes"] == du(cutmix_fx.images_dir)
    assert m.normalization == NORM and m.classes == sorted(os.listdir(cutmix_fx.images_dir))
    assert np.array_equal(st.labels(), cutmix_fx.y)
    for i in (0, 17, n - 1):  # images stored losslessly, in ImageFolder order
        assert np.array_equal(st.get(i).pixels, cutmix_fx.images[i])
    pf = pq.ParquetFile(out / "labels/distances-e0000-e0001.parquet")
    assert pf.metadata.num_row_groups == 2  # one row group per epoch
    for e, epoch in enumerate(cutmix_fx.records):
        lab = read_epoch_labels(st, e)
        assert lab.d_org is not None and lab.d_aug is not None
        want_org, want_aug = expected_distances(cutmix_fx, e)
        np.testing.assert_allclose(lab.d_org, want_org, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(lab.d_aug, want_aug, rtol=1e-3, atol=1e-3)
        cols = st.read_distances(e).to_pydict()
        for pos, crops, flip, perm, lam, box, _ in epoch:
            for k, p in enumerate(pos.tolist()):
                assert (cols["crop_i"][p], cols["crop_j"][p], cols["crop_h"][p], cols["crop_w"][p]) == tuple(crops[k])
                assert cols["flip"][p] == bool(flip[k])
                assert cols["partner"][p] == (p if perm is None else int(pos[perm[k]]))
                assert cols["lam"][p] == np.float32(1.0 if lam is None else lam)
                want_box = (0, 0, 0, 0) if box is None else tuple(int(v) for v in box)  # (x1, y1, x2, y2)
                got = (cols["box_y1"][p], cols["box_x1"][p], cols["box_y2"][p], cols["box_x2"][p])
                assert got == want_box  # SRe2L's x is the height axis: x -> box_y


def test_loader_replays_the_views_the_teacher_labelled(cutmix_fx: Fixture, cutmix_store, teacher) -> None:
    out, _ = cutmix_store
    n = len(cutmix_fx.images)
    for e in range(3):
        seen = 0
        for batch in DistilledDataset(out, epoch=e, batch_size=16, labels="dbr"):
            with torch.inference_mode():
                logits = teacher.model(batch["images"])
            a, c = distances(logits, batch["y"], batch["y_partner"], batch["lam"])
            torch.testing.assert_close(a, batch["d_org"], rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(c, batch["d_aug"], rtol=2e-3, atol=2e-3)
            seen += len(batch["index"])
        assert seen == n


def test_mixup_fp32_keep_full_and_temperature(tmp_path: Path, teacher) -> None:
    fx = make_fixture(tmp_path / "fx", ["mixup", "mixup"], per_class=3, batch=8, dtype=torch.float32, teacher=teacher)
    out = tmp_path / "s"
    summary = convert_sre2l(fx.labels_dir, fx.images_dir, out, normalization=NORM, keep_full=True, temperature=2.0,
                            precision="fp32")
    assert verify_store(out) == []
    st = Store(out)
    assert summary["mix"] == "mixup" and summary["logits_dtypes"] == ["float32"]
    assert st.manifest.labels["softlabels"]["temperature"] == 2.0
    soft = zarr.open_array(out / "labels/softlabels.zarr", mode="r")
    assert soft.shape == (2, 30, 10)
    for e in range(2):
        lab = read_epoch_labels(st, e)
        assert lab.d_org is not None and lab.d_aug is not None
        want_org, want_aug = expected_distances(fx, e, temperature=2.0)
        np.testing.assert_allclose(lab.d_org, want_org, rtol=1e-6, atol=1e-6)  # fp32 table: exact up to rounding
        np.testing.assert_allclose(lab.d_aug, want_aug, rtol=1e-6, atol=1e-6)
        for pos, *_, logits in fx.records[e]:
            np.testing.assert_allclose(cast(np.ndarray, soft[e])[pos], torch.softmax(logits / 2.0, 1).numpy(), atol=1e-3)


def test_codecs_from_the_stored_logits(tmp_path: Path, teacher) -> None:
    fx = make_fixture(tmp_path / "fx", ["cutmix", "cutmix"], per_class=3, batch=8, dtype=torch.float32,
                      teacher=teacher)
    out = tmp_path / "s"
    convert_sre2l(fx.labels_dir, fx.images_dir, out, normalization=NORM, codecs="dbr,topk:2,dbrc:1,full", workers=2)
    assert verify_store(out) == []
    m = Store(out).manifest
    assert list(m.labels["codecs"]) == ["dbr", "topk:2", "dbrc:1", "full"] and m.labels["softlabels"]
    ids = np.asarray(zarr.open_array(out / "labels/codecs/topk2/ids.zarr", mode="r")[...])
    probs = np.asarray(zarr.open_array(out / "labels/codecs/topk2/probs.zarr", mode="r")[...])
    conf = np.asarray(zarr.open_array(out / "labels/codecs/dbrc1/ids.zarr", mode="r")[...])
    y = Store(out).labels()
    for e in range(2):
        for pos, *_, logits in fx.records[e]:
            p = torch.softmax(logits, 1)
            top = torch.sort(p, dim=1, descending=True, stable=True)
            assert (ids[e][pos] == top.indices[:, :2].numpy()).all()
            np.testing.assert_allclose(probs[e][pos].astype(np.float32), top.values[:, :2].numpy(), atol=1e-3)
            masked = p.clone()
            masked[torch.arange(len(pos)), torch.from_numpy(y[pos])] = -1
            assert (conf[e][pos][:, 0] == masked.argmax(1).numpy()).all()
    b = next(iter(DistilledDataset(out, 1, 10, "dbrc:1")))
    assert b["codec_ids"].shape == (10, 1) and "d_org" in b


def test_mixup_loader_replay(tmp_path: Path, teacher) -> None:
    fx = make_fixture(tmp_path / "fx", ["mixup"], per_class=2, batch=8, dtype=torch.float32, teacher=teacher)
    out = tmp_path / "s"
    convert_sre2l(fx.labels_dir, fx.images_dir, out, normalization=NORM)
    for batch in DistilledDataset(out, epoch=0, batch_size=7, labels="dbr"):
        with torch.inference_mode():
            a, c = distances(teacher.model(batch["images"]), batch["y"], batch["y_partner"], batch["lam"])
        torch.testing.assert_close(a, batch["d_org"], rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(c, batch["d_aug"], rtol=2e-3, atol=2e-3)


def test_shards_and_order_file_give_the_same_distances(tmp_path: Path, cutmix_fx: Fixture, cutmix_store) -> None:
    out, _ = cutmix_store
    ref = Store(out)
    shards = tmp_path / "shards"
    prepare_imagefolder(cutmix_fx.images_dir, shards, shard_size=16)
    via_shards = tmp_path / "a"
    convert_sre2l(cutmix_fx.labels_dir, shards, via_shards, normalization=NORM, epochs_per_file=2)
    orders = np.stack([np.concatenate([r[0] for r in epoch]) for epoch in cutmix_fx.records])
    np.save(tmp_path / "order.npy", orders)
    via_order = tmp_path / "b"
    convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, via_order, normalization=NORM,
                  order_file=tmp_path / "order.npy", sampler_seed=7)
    (tmp_path / "order.txt").write_text("\n".join(" ".join(map(str, row)) for row in orders) + "\n")
    via_text = tmp_path / "c"
    convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, via_text, normalization=NORM,
                  order_file=tmp_path / "order.txt")
    for other in (via_shards, via_order, via_text):
        st = Store(other)
        assert Store(other).manifest.classes == ref.manifest.classes
        for e in range(3):
            assert st.read_distances(e).drop(["epoch"]).equals(ref.read_distances(e).drop(["epoch"]))
    bad = orders.copy()
    bad[1, 0] = bad[1, 1]
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(NrrError, match="epoch 1: the order is not a permutation") as err:
        convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, tmp_path / "d", order_file=tmp_path / "bad.npy")
    assert "bad.npy" in str(err.value)
    assert not (tmp_path / "d").exists()
    no_leftovers(tmp_path)


def test_resume_after_a_kill_gives_identical_files(tmp_path: Path, cutmix_fx: Fixture, cutmix_store) -> None:
    ref, _ = cutmix_store
    out = tmp_path / "s"
    calls = []

    def killer(task: str, done: int, total: int | None) -> None:
        calls.append(task)
        if task == "convert label files" and done == 9:  # epoch 2 written, its chunk not yet closed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, out, normalization=NORM, epochs_per_file=2,
                      progress=killer)
    work = tmp_path / f"{WORK_PREFIX}s"
    assert not out.exists() and (work / "store/labels/distances-e0000-e0001.parquet").is_file()
    with pytest.raises(ResumeMismatchError, match="temperature"):
        convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, out, normalization=NORM, epochs_per_file=2,
                      temperature=3.0)
    summary = convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, out, normalization=NORM, epochs_per_file=2)
    assert (summary["chunks_resumed"], summary["chunks_computed"]) == (1, 1)
    assert verify_store(out) == []
    for rel in ("labels/distances-e0000-e0001.parquet", "labels/distances-e0002-e0002.parquet", "index.parquet",
                "images/shard-000000.tar"):
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    no_leftovers(tmp_path)


# -- bad inputs: one line naming the file, nothing half-written -----------------------------------------
def _copy(fx: Fixture, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(fx.labels_dir, dst / "labels")
    shutil.copytree(fx.images_dir, dst / "images")
    return dst / "labels", dst / "images"


def _refused(labels: Path, images: Path, out: Path, *parts: object) -> NrrError:
    with pytest.raises(NrrError) as err:
        convert_sre2l(labels, images, out, normalization=NORM, epochs_per_file=1)
    msg = err.value.message
    assert "\n" not in msg
    for part in parts:
        assert str(part) in msg, (part, msg)
    assert not out.exists()
    no_leftovers(out.parent)
    return err.value


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path, cutmix_fx: Fixture) -> None:
    labels, images = _copy(cutmix_fx, tmp_path)
    marker = tmp_path / "pwned"
    target = labels / "epoch_1" / "batch_1.tar"
    torch.save([torch.zeros(16, 4), _Payload(marker)], target)
    _refused(labels, images, tmp_path / "out", target, "posix.system")
    assert not marker.exists()
    target.write_bytes(pickle.dumps(_Payload(marker), protocol=2))  # a bare pickle, not a torch zip
    _refused(labels, images, tmp_path / "out", target)
    assert not marker.exists()
    # a numpy float where the box wants integers: the scalar is refused, not built
    rec = torch.load(labels / "epoch_0" / "batch_0.tar", weights_only=False)
    rec[4] = [np.float64(v) for v in rec[4]]
    torch.save(rec, target)
    _refused(labels, images, tmp_path / "out", target, "not an integer")


def test_missing_epoch_folder(tmp_path: Path, cutmix_fx: Fixture) -> None:
    labels, images = _copy(cutmix_fx, tmp_path)
    shutil.rmtree(labels / "epoch_1")
    _refused(labels, images, tmp_path / "out", labels / "epoch_1", "missing epoch folder")


def test_batch_file_of_the_wrong_size(tmp_path: Path, cutmix_fx: Fixture) -> None:
    labels, images = _copy(cutmix_fx, tmp_path)
    target = labels / "epoch_2" / "batch_0.tar"
    rec = torch.load(target, weights_only=False)
    torch.save([rec[0][:15], rec[1][:15], torch.arange(15), rec[3], rec[4], rec[5][:15]], target)
    _refused(labels, images, tmp_path / "out", target, "holds 15 views, expected 16")


def test_image_count_that_does_not_match_the_files(tmp_path: Path, cutmix_fx: Fixture) -> None:
    labels, images = _copy(cutmix_fx, tmp_path)
    files = sorted(images.rglob("*.png"))
    files[5].unlink()  # 39 images: still 3 batches, but the last one should hold 7
    _refused(labels, images, tmp_path / "out", labels / "epoch_0" / "batch_2.tar", "holds 8 views, expected 7")
    for i in [2] + [i for i in range(1, 40, 4) if i != 5]:
        files[i].unlink()  # 29 images (every class keeps some) make 2 batches, the folder has 3
    _refused(labels, images, tmp_path / "out", images, "29 images make 2 batch(es) of 16")


# -- safe loading details -------------------------------------------------------------------------------
class _LegacyNumpyPickler(pickle.Pickler):
    """Writes numpy scalars under numpy 1.x's module name, as SRe2L's original files have them."""

    def __init__(self, f, protocol=None, **kw) -> None:
        super().__init__(f, protocol, **kw)
        self._f = f

    def dump(self, obj) -> None:
        super().dump(obj)
        data = self._f.getvalue().replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
        self._f.seek(0)
        self._f.truncate()
        self._f.write(data)


def test_numpy1_scalar_names_load(tmp_path: Path) -> None:
    import types

    module = types.SimpleNamespace(Pickler=_LegacyNumpyPickler, __name__="legacy_pickle")
    box = [np.int64(1), np.int64(2), np.int32(20), np.int64(21)]
    rec = [torch.rand(4, 4) * 0.5, torch.zeros(4, dtype=torch.bool), torch.randperm(4), 0.25, box, torch.randn(4, 3)]
    buf = io.BytesIO()
    torch.save(rec, buf, pickle_module=module)
    path = tmp_path / "batch_0.tar"
    path.write_bytes(buf.getvalue())
    assert b"numpy.core.multiarray" in buf.getvalue()
    loaded = load_batch(path)
    assert loaded.box == (1, 2, 20, 21) and loaded.mix == "cutmix" and loaded.lam == 0.25
    assert safe_torch_load(path)[4][2].dtype == np.int32


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_convert_json_and_errors(tmp_path: Path) -> None:
    fx = make_fixture(tmp_path / "fx", ["cutmix", "cutmix"], per_class=2, batch=8)  # random logits: no teacher
    out = tmp_path / "s"
    runner = CliRunner()
    args = ["convert-softlabels", "--format", "sre2l", str(fx.labels_dir), "--images", str(fx.images_dir),
            "--out", str(out), "--mean", str(MEAN), "--std", str(STD), "--json"]
    res = runner.invoke(make_app(), args)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["views"] == 40 and summary["mix"] == "cutmix" and verify_store(out) == []
    # without --teacher nothing tied the labels to the images: one note on stderr says how to check them
    assert res.stderr.count("\n") == 1 and "not checked against a teacher" in res.stderr and "verify" in res.stderr
    res = runner.invoke(make_app(), args)  # exists: refused without --overwrite
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "--overwrite" in res.stderr
    assert runner.invoke(make_app(), [*args, "--overwrite"]).exit_code == 0
    from nrrstore_cli.main import app  # the real root: a usage error is one line, exit 2

    res = runner.invoke(app, ["convert-softlabels", "--format", "fkd-zip", str(fx.labels_dir), "--images",
                              str(fx.images_dir), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and res.stderr.startswith("nrrstore: --format: ") and "sre2l" in res.stderr
    res = runner.invoke(make_app(), ["convert-softlabels", str(tmp_path / "nowhere"), "--images", str(fx.images_dir),
                                     "--out", str(tmp_path / "t")])
    assert res.exit_code == 1 and "nowhere: no such folder" in res.stderr


def test_crop_rounding_is_pils() -> None:
    """SRe2L replays crops with PIL's Image.crop on fractional boxes; ours must cut the same pixels."""
    from nrrstore.convert.sre2l import crop_pixels

    img = fmnist("train", 1)[0][1]
    h, w = img.shape
    rng = np.random.default_rng(3)
    fr = np.concatenate([rng.uniform(0.0, 0.5, (200, 2)), rng.uniform(0.1, 0.5, (200, 2))], 1).astype(np.float32)
    # exact ties on a 28-pixel side (odd eighths give x.5): PIL rounds them half to even
    fr[:4] = [[0.375, 0.125, 0.25, 0.375], [0.625, 0.375, 0.125, 0.5], [0.125, 0.625, 0.375, 0.125], [0.0, 0.0, 1.0, 1.0]]
    ci, cj, ch, cw = crop_pixels(fr, h, w, "x")
    pil = Image.fromarray(img, "L")
    for k, f in enumerate(fr.tolist()):
        box = (f[1] * w, f[0] * h, f[1] * w + f[3] * w, f[0] * h + f[2] * h)  # left, top, right, bottom
        want = np.asarray(pil.crop(box))
        assert np.array_equal(img[ci[k]:ci[k] + ch[k], cj[k]:cj[k] + cw[k]], want), (k, f)
    with pytest.raises(NrrError, match="view 0: crop fractions"):
        crop_pixels(np.array([[0.9, 0.0, 0.2, 0.5]]), h, w, "x")



def test_worker_processes_give_identical_bytes_and_report_errors(tmp_path: Path, cutmix_fx: Fixture,
                                                                 cutmix_store) -> None:
    ref, summary = cutmix_store
    assert summary["workers"] == 0  # a 9-file folder is converted in-process by default
    out = tmp_path / "s"
    got = convert_sre2l(cutmix_fx.labels_dir, cutmix_fx.images_dir, out, normalization=NORM, epochs_per_file=2,
                        workers=2)
    assert got["workers"] == 2
    for rel in ("labels/distances-e0000-e0001.parquet", "labels/distances-e0002-e0002.parquet"):
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    labels, images = _copy(cutmix_fx, tmp_path / "bad")
    target = labels / "epoch_1" / "batch_2.tar"
    rec = torch.load(target, weights_only=False)
    torch.save([rec[0], rec[1], None, 0.5, None, rec[5]], target)  # lambda without a partner
    with pytest.raises(NrrError) as err:
        convert_sre2l(labels, images, tmp_path / "bad/out", epochs_per_file=3, workers=2)
    assert err.value.path == str(target) and "partner (item 2) is None" in err.value.problem
    assert not (tmp_path / "bad/out").exists()
    no_leftovers(tmp_path / "bad")
