"""Label codecs (issue 15) on real Fashion-MNIST images with a real (briefly trained) teacher: every codec from
the same logits in one relabel pass, the student's targets they imply, and one clear line for what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from nrrstore.errors import NrrError
from nrrstore.format.codecs import Codec, codec_bytes, id_dtype, parse_codec, parse_codecs
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.labels.relabel import relabel
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.loader import DistilledDataset
from nrrstore.train.losses import codec_target
from nrrstore.train.student import train_student
from tests._builders import forge_checksums, write_fmnist_store
from tests.conftest import FMNIST_SUBSET

pytestmark = pytest.mark.usefixtures("single_thread")  # `teacher` comes from conftest.py
ROOT = Path(__file__).resolve().parents[1]
CODECS = "dbr,topk:2,dbrc:1,topk:10,full"


def _array(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(path, mode="r")[...])


def _path(store: Path, codec: str, field: str) -> Path:
    """Where the manifest puts a codec's array (relabel versions the folder name)."""
    m = Store(store).manifest
    if codec == "full":
        return store / m.labels["softlabels"]["path"]
    return store / m.labels["codecs"][codec]["fields"][field]["path"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, teacher) -> Path:
    store = tmp_path_factory.mktemp("codecs") / "s"
    write_fmnist_store(store, per_class=4, shard_size=16)
    relabel(store, teacher, 3, AugRecipe(size=28, group_size=8, seed=5), codecs=CODECS, batch_size=16)
    return store


def test_parse() -> None:
    assert parse_codec("topk:2") == Codec("topk", 2) and parse_codec(" dbrc:0 ") == Codec("dbrc", 0)
    assert [c.name for c in parse_codecs("dbr,topk:2", 10)] == ["dbr", "topk:2"]
    # Strict (issue 31): upper case, fullwidth digits and a codec named twice are refused, not guessed at.
    for bad, why in [("top2", "unknown"), ("topk", "needs a class count"), ("dbr:2", "takes no"),
                     ("topk:0", "1..10"), ("topk:11", "1..10"), ("dbrc:10", "0..9"), ("", "no label codec"),
                     ("DBRC:0", "unknown"), ("topk:\uff12", "unknown"), ("dbr,topk:2,dbr", "named twice"),
                     ("topk:2,topk:2:fp16", "named twice")]:
        with pytest.raises(NrrError, match=why):
            parse_codecs(bad, 10)
    assert [id_dtype(c) for c in (10, 256, 257, 1000, 70000)] == [np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]
    # the formula size-report prints: 2 fp16 distances, K (id + fp16) per view, C fp16 for full
    assert Codec("dbrc", 1).raw_bytes_per_view(1000) == 4 + 2 + 2
    assert Codec("topk", 2).raw_bytes_per_view(10) == 2 * (1 + 2) and Codec("full").raw_bytes_per_view(1000) == 2000


def test_one_pass_writes_every_codec_from_the_same_logits(labelled: Path) -> None:
    assert verify_store(labelled) == []
    m = Store(labelled).manifest
    assert list(m.labels["codecs"]) == ["dbr", "topk:2", "dbrc:1", "topk:10", "full"]
    soft = _array(_path(labelled, "full", "")).astype(np.float32)  # [E, N, C]
    arr = {f: _array(_path(labelled, "topk:2", f)) for f in ("ids", "probs")}
    assert arr["ids"].dtype == np.uint8 and arr["probs"].dtype == np.float16 and arr["ids"].shape == (3, 40, 2)
    # top-k of the same probabilities the full soft labels hold (both fp16 of one softmax)
    top = np.take_along_axis(soft, arr["ids"].astype(np.int64), axis=2)
    np.testing.assert_allclose(top, arr["probs"].astype(np.float32), atol=1e-3)
    assert (top[..., 0] >= soft.max(axis=2) - 1e-3).all() and (top[..., 0] >= top[..., 1]).all()
    # dbrc: the most likely classes other than the view's own label, with -log p
    ds = DistilledDataset(labelled, 0, 40, "dbrc:1")
    y = np.empty(40, np.int64)
    for b in ds:
        y[b["index"].numpy()] = b["y"].numpy()
    ids = _array(_path(labelled, "dbrc:1", "ids"))[0, :, 0].astype(np.int64)
    dist = _array(_path(labelled, "dbrc:1", "dist"))[0, :, 0].astype(np.float32)
    assert (ids != y).all()
    masked = soft[0].copy()
    masked[np.arange(40), y] = -1
    assert (ids == masked.argmax(1)).all()
    np.testing.assert_allclose(np.exp(-dist), masked.max(1), rtol=5e-3, atol=1e-4)
    sizes = codec_bytes(m)
    assert set(sizes) == {"dbr", "topk:2", "dbrc:1", "topk:10", "full"}
    assert sizes["dbrc:1"] > sizes["dbr"] > 0 and sizes["topk:10"] > sizes["topk:2"] > 0


def test_codecs_are_deterministic_and_leave_dbr_alone(tmp_path: Path, teacher, labelled: Path) -> None:
    other = tmp_path / "s"
    write_fmnist_store(other, per_class=4, shard_size=16)
    relabel(other, teacher, 3, AugRecipe(size=28, group_size=8, seed=5), codecs="dbr", batch_size=16)
    dbr_only = {p.name: p.read_bytes() for p in (other / "labels").glob("*.parquet")}
    assert dbr_only == {p.name: p.read_bytes() for p in (labelled / "labels").glob("*.parquet")}
    relabel(other, teacher, 3, AugRecipe(size=28, group_size=8, seed=5), codecs=CODECS, batch_size=16, overwrite=True)
    files = {p.relative_to(other).as_posix(): p.read_bytes() for p in (other / "labels").rglob("*") if p.is_file()}
    assert files == {p.relative_to(labelled).as_posix(): p.read_bytes()
                     for p in (labelled / "labels").rglob("*") if p.is_file()}
    # relabelling with DBR alone drops the codec arrays from the store and its manifest
    relabel(other, teacher, 3, AugRecipe(size=28, group_size=8, seed=5), batch_size=16, overwrite=True)
    assert not list((other / "labels").glob("codecs*")) and verify_store(other) == []
    assert list(Store(other).manifest.labels["codecs"]) == ["dbr"]


def test_targets_the_codecs_imply(labelled: Path) -> None:
    full = next(iter(DistilledDataset(labelled, 1, 40, "kd")))
    everything = next(iter(DistilledDataset(labelled, 1, 40, "topk:10")))
    q = codec_target("topk", 10, everything["codec_ids"], everything["codec_values"])
    torch.testing.assert_close(q, full["soft"] / full["soft"].sum(1, keepdim=True), atol=2e-3, rtol=0)
    two = next(iter(DistilledDataset(labelled, 1, 40, "topk:2")))
    q2 = codec_target("topk", 10, two["codec_ids"], two["codec_values"])
    assert torch.allclose(q2.sum(1), torch.ones(40)) and (q2 > 0).all()
    torch.testing.assert_close(q2.gather(1, two["codec_ids"]), full["soft"].gather(1, two["codec_ids"]), atol=2e-3,
                               rtol=0)
    b = next(iter(DistilledDataset(labelled, 1, 40, "dbrc:1")))
    q3 = codec_target("dbrc", 10, b["codec_ids"], b["codec_values"], b["y"], b["y_partner"], b["lam"], b["d_org"],
                      b["d_aug"])
    assert torch.allclose(q3.sum(1), torch.ones(40), atol=1e-5)
    y = b["y"].view(-1, 1)
    torch.testing.assert_close(q3.gather(1, y), full["soft"].gather(1, y), atol=3e-3, rtol=0.01)
    # dbrc:0 reads DBR's table alone: the label's and (mixed views) the partner's probability
    b0 = next(iter(DistilledDataset(labelled, 1, 40, "dbrc:0")))
    assert "codec_ids" not in b0
    q0 = codec_target("dbrc", 10, torch.zeros((40, 0), dtype=torch.long), torch.zeros((40, 0)), b0["y"],
                      b0["y_partner"], b0["lam"], b0["d_org"], b0["d_aug"])
    mixed = (b0["lam"] < 0.9) & (b0["y"] != b0["y_partner"])
    assert mixed.any()
    y2 = b0["y_partner"].view(-1, 1)
    torch.testing.assert_close(q0.gather(1, y2)[mixed], full["soft"].gather(1, y2)[mixed], atol=0.02, rtol=0.05)


@pytest.mark.filterwarnings("ignore::nrrstore.errors.NrrWarning")  # two steps per epoch: a smoke run
def test_students_train_on_codecs_and_missing_ones_are_named(labelled: Path) -> None:
    val = ROOT / "data" / "fashion-mnist" / "test"
    for labels, loss in (("topk:2", "kd"), ("dbrc:1", "kd"), ("dbrc:0", "kd"), ("dbrc:1", "match"), ("topk:2", "match")):
        r = train_student(labelled, val, epochs=1, labels=labels, batch_size=20, cycle=True, codec_loss=loss)
        assert np.isfinite(r["history"][-1]["loss"]) and r["labels"] == labels
        assert ("dbr" in r["history"][-1]) == (loss == "match")  # match: L_sce + L_dbr over the stored distances
    r = train_student(labelled, val, epochs=1, labels="dbrc:0", batch_size=20, cycle=True)  # match would be DBR
    assert "codec_loss" not in r and "dbr" not in r["history"][-1]
    with pytest.raises(NrrError, match=r"no topk:3 labels \(it has: dbr, topk:2, dbrc:1, topk:10, full\)"):
        DistilledDataset(labelled, 0, 20, "topk:3")
    with pytest.raises(NrrError, match="unknown label mode 'top3'"):
        DistilledDataset(labelled, 0, 20, "top3")


def test_corrupt_codec_values_are_one_line(tmp_path: Path, labelled: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(labelled, bad)
    arr = zarr.open_array(_path(bad, "topk:2", "ids"), mode="r+")
    arr[0, 0, 0] = 200  # a class id the store does not have (the manifest's checksum no longer matches either)
    with pytest.raises(NrrError, match="differs from the sha256 the manifest records"):
        DistilledDataset(bad, 0, 20, "topk:2")  # edited in place: refused before anything is read
    assert any("ids.zarr" in p for p in verify_store(bad))
    forge_checksums(bad)  # the edit declared: the codec reader's own value checks must catch it
    with pytest.raises(NrrError, match=r"topk:2: class ids outside 0\.\.9 in epoch 0"):
        for _ in DistilledDataset(bad, 0, 20, "topk:2"):
            pass
    assert any("ids.zarr" in p for p in verify_store(bad))


@pytest.mark.filterwarnings("ignore::nrrstore.errors.NrrWarning")  # one step per epoch: a smoke run
def test_evaluate_compares_codecs_and_plots_the_front(tmp_path: Path, labelled: Path) -> None:
    from PIL import Image

    from nrrstore.evaluation import StudentProtocol, evaluate_store, format_table
    from nrrstore.plots import front_of, plot_result

    val = ROOT / "data" / "fashion-mnist" / "test"
    r = evaluate_store(labelled, val, tmp_path / "ev", seeds=1, labels=["dbr", "topk:2", "dbrc:1", "onehot"],
                       protocol=StudentProtocol(epochs=1, batch_size=40))
    assert r["labels"] == ["dbr", "topk:2", "dbrc:1", "onehot"]
    per_view = r["label_bytes"]["codecs"]
    assert per_view["dbrc:1"] > per_view["dbr"] > 0 and per_view["kd"] > per_view["topk:2"] > 0
    assert "label bytes per view (measured): dbr" in format_table(r)
    bars_only = dict(r, labels=["onehot"], table={"store": {"onehot": r["table"]["store"]["onehot"]}})
    w1 = Image.open(plot_result(bars_only, tmp_path / "bars.png")).width
    w2 = Image.open(plot_result(r, tmp_path / "both.png")).width
    assert w2 > w1  # the accuracy-per-byte panel beside the bars
    pts = [("a", 4.0, 0.70, 0.01), ("b", 8.0, 0.75, 0.01), ("c", 8.0, 0.72, 0.0), ("d", 2.0, 0.71, 0.0)]
    assert front_of(pts) == ["b", "d"]


def test_the_class_prior_spreads_what_a_codec_does_not_store(labelled: Path) -> None:
    from nrrstore.format.codecs import read_prior

    m = Store(labelled).manifest
    prior = read_prior(labelled, m.labels["codecs_prior"], 10)
    np.testing.assert_allclose(prior.sum(1), 1.0, atol=1e-5)
    assert np.diag(prior).mean() > 2 / 10  # a briefly trained teacher: rows lean toward their own class (chance: 0.1)
    b = next(iter(DistilledDataset(labelled, 2, 40, "topk:2")))
    p = torch.from_numpy(prior)
    q = codec_target("topk", 10, b["codec_ids"], b["codec_values"], b["y"], b["y_partner"], b["lam"], prior=p)
    assert torch.allclose(q.sum(1), torch.ones(40), atol=1e-5)
    torch.testing.assert_close(q.gather(1, b["codec_ids"]), b["codec_values"].float(), atol=1e-6, rtol=0)
    lam = b["lam"].view(-1, 1)
    view_prior = lam * p[b["y"]] + (1 - lam) * p[b["y_partner"]]
    unknown = torch.ones(40, 10).scatter_(1, b["codec_ids"], 0.0).bool()
    row = 0 if unknown[0].sum() > 1 else 1
    ratio = q[row][unknown[row]] / view_prior[row][unknown[row]]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-4, atol=0)  # proportional to the prior


def test_int8_codecs_keep_their_values_within_the_code_bound(tmp_path: Path, teacher, labelled: Path) -> None:
    from nrrstore.format import quant
    from nrrstore.format.codecs import CODE_MAX, CodecLabels

    assert parse_codec("dbrc:4:int8") == Codec("dbrc", 4, int8=True) and parse_codec("topk:2:fp16") == Codec("topk", 2)
    assert Codec("dbrc", 4, int8=True).raw_bytes_per_view(1000) == 4 + 4 * 3 and Codec("dbrc", 4, True).name == "dbrc:4:int8"
    with pytest.raises(NrrError, match="takes no"):
        parse_codec("dbr:int8")
    s = tmp_path / "s"
    write_fmnist_store(s, per_class=4, shard_size=16)
    relabel(s, teacher, 3, AugRecipe(size=28, group_size=8, seed=5), codecs="topk:2,topk:2:int8,dbrc:1:int8,dbrc:1",
            batch_size=16)
    assert verify_store(s) == []
    m = Store(s).manifest
    codes = _array(_path(s, "dbrc:1:int8", "codes"))
    assert codes.dtype == np.uint8 and m.labels["codecs"]["dbrc:1:int8"]["code_max"] == CODE_MAX
    bound = quant.max_abs_log_error(CODE_MAX)
    for fp16, int8, field in (("topk:2", "topk:2:int8", "probs"), ("dbrc:1", "dbrc:1:int8", "dist")):
        a = CodecLabels(s, fp16, m.labels["codecs"][fp16], 10).read(1, 0, 40)
        b = CodecLabels(s, int8, m.labels["codecs"][int8], 10).read(1, 0, 40)
        assert (a["ids"] == b["ids"]).all()
        da = a[field] if field == "dist" else -np.log(a[field])
        db = b[field] if field == "dist" else -np.log(b[field])
        close = da < CODE_MAX  # larger distances clip to CODE_MAX
        assert (np.abs(np.log1p(db) - np.log1p(np.minimum(da, CODE_MAX)))[close] <= bound + 2e-3).all()
    sizes = codec_bytes(m)
    assert sizes["dbrc:1:int8"] < sizes["dbrc:1"]


def test_a_reader_never_mixes_two_versions_of_zarr_labels(tmp_path: Path, teacher) -> None:
    """relabel --overwrite publishes soft labels and codec arrays under new names and deletes the old ones after the
    manifest switch: a loader that opened the old manifest fails in one line instead of reading the new values
    (or zeros) for the old views."""
    s = tmp_path / "s"
    write_fmnist_store(s, per_class=4, shard_size=16)
    relabel(s, teacher, 3, AugRecipe(size=28, group_size=8, seed=1), codecs="dbr,topk:2,full", batch_size=16)
    old = {mode: DistilledDataset(s, 0, 40, mode) for mode in ("kd", "topk:2")}
    for ds in old.values():
        next(iter(ds))  # reading version 1
    relabel(s, teacher, 3, AugRecipe(size=28, group_size=8, seed=2), codecs="dbr,topk:2,full", batch_size=16,
            overwrite=True)
    assert verify_store(s) == [] and len(list((s / "labels").glob("softlabels*"))) == 1
    for ds in old.values():
        ds.set_epoch(1)
        with pytest.raises(NrrError, match="unreadable|missing"):
            next(iter(ds))
    for mode in ("kd", "topk:2"):  # a new reader reads the new version
        assert next(iter(DistilledDataset(s, 1, 40, mode)))["index"].numel() == 40


def test_a_missing_chunk_is_refused_not_read_as_zeros(tmp_path: Path, labelled: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(labelled, bad)
    for codec, field in (("full", ""), ("topk:2", "probs")):
        chunk = next(p for p in sorted(_path(bad, codec, field).rglob("*")) if p.is_file() and p.name != "zarr.json")
        chunk.unlink()
    with pytest.raises(NrrError, match="missing, though the manifest lists it"):
        DistilledDataset(bad, 0, 40, "topk:2")
    forge_checksums(bad)  # the chunks unlisted too: the readers must still not read zeros
    with pytest.raises(NrrError, match="missing"):
        for _ in DistilledDataset(bad, 0, 40, "kd"):
            pass
    with pytest.raises(NrrError, match="outside their range|non-finite"):
        for _ in DistilledDataset(bad, 0, 40, "topk:2"):
            pass


def test_topk_at_k_equal_c_is_full_soft_label_kd_exactly(tmp_path: Path, teacher) -> None:
    """Top-k storing every class is the full soft labels: a KD student on it follows the same losses and ends
    with the same weights as one on the stored soft labels (issue 29: the codec family reaches KD)."""
    from tests._teacher import one_thread

    store = tmp_path / "s"
    write_fmnist_store(store, per_class=3, shard_size=16)
    with one_thread():
        relabel(store, teacher, 2, AugRecipe(size=28, group_size=10, seed=2), batch_size=30, full_softlabels=True,
                codecs=["dbr", "topk:10"])
        runs = [train_student(store, FMNIST_SUBSET / "test", epochs=2, labels=labels, batch_size=10, seed=1,
                              arch_kwargs={"width": 8}, codec_loss="kd") for labels in ("kd", "topk:10")]
    for a, b in zip(runs[0]["history"], runs[1]["history"], strict=True):
        assert a["loss"] == b["loss"], (a, b)
    wa, wb = runs[0]["model"].state_dict(), runs[1]["model"].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
