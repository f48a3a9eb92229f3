"""`evaluate`: every cell, the random-real baseline, DD-Ranking metrics, resume, and bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.errors import NrrError
from nrrstore.evaluation import StudentProtocol, evaluate_store, lrs, metrics
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import relabel
from tests.conftest import ROOT

PROTO = StudentProtocol(epochs=2)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, teacher, fmnist_train_shards) -> Path:
    out = tmp_path_factory.mktemp("ev") / "store"
    cfg = method_config("nrr", 1, 28, cidd={"mipc": 6}, nrr={"iterations": 2})
    distill(fmnist_train_shards, teacher, out, cfg)
    relabel(out, teacher, 2, full_softlabels=True)
    return out


@pytest.mark.slow
def test_every_cell_and_a_faithful_baseline(small_store, teacher, fmnist_train_shards, fmnist_test_shards,
                                            tmp_path, single_thread) -> None:
    r = evaluate_store(small_store, fmnist_test_shards, tmp_path / "work", train=fmnist_train_shards,
                       teacher=teacher, seeds=2, protocol=PROTO, full_acc=0.9)
    assert r["labels"] == ["dbr", "kd", "onehot"]
    assert {(c["images"], c["labels"], c["seed"]) for c in r["cells"]} == {
        (i, k, s) for i in ("store", "random") for k in ("dbr", "kd", "onehot") for s in (0, 1)}
    for images in ("store", "random"):
        for kind in ("dbr", "kd", "onehot"):
            cell = r["table"][images][kind]
            assert cell["n"] == 2 and 0 <= cell["mean"] <= 1 and len(cell["values"]) == 2
    # The baseline: same IPC, same teacher, augmentation, epochs and precision; other (real) images.
    st = Store(small_store)
    for seed in (0, 1):
        base = Store(tmp_path / "work" / f"random-s{seed}")
        bm = base.manifest
        assert bm.num_images == st.manifest.num_images and bm.per_class == st.manifest.per_class
        assert bm.teacher["sha256"] == st.manifest.teacher["sha256"]
        assert bm.augmentation == st.manifest.augmentation
        assert bm.labels["distances"]["epochs"] == st.manifest.labels["distances"]["epochs"]
        assert bm.labels["distances"]["precision"] == st.manifest.labels["distances"]["precision"]
        assert bm.labels.get("softlabels")
        assert bm.normalization == st.manifest.normalization
    keys0 = {Store(tmp_path / "work" / "random-s0").get(i).meta["source_key"] for i in range(10)}
    keys1 = {Store(tmp_path / "work" / "random-s1").get(i).meta["source_key"] for i in range(10)}
    assert keys0 != keys1  # one random sample per seed
    mt = r["metrics"]
    for kind in ("dbr", "kd", "onehot"):
        assert mt[f"ior_{kind}"]["n"] == 2
    assert mt["hlr"]["mean"] == pytest.approx(0.9 - r["table"]["store"]["onehot"]["mean"])
    assert mt["lrs_label"] == "dbr" and mt["lrs"]["n"] == 2
    # Nothing was written into the store.
    assert not any(p.name.startswith((".relabel", "checkpoints", "cells")) for p in small_store.iterdir())


def test_metrics_follow_ddranking_definitions() -> None:
    assert lrs(0.0, 0.0) == pytest.approx(100 * (1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert lrs(1.0, -1.0) == pytest.approx(100.0) and lrs(-1.0, 1.0) == pytest.approx(0.0)
    cells = {"store": {"dbr": {0: 0.8, 1: 0.7}, "onehot": {0: 0.6, 1: 0.5}},
             "random": {"dbr": {0: 0.75, 1: 0.72}, "onehot": {0: 0.65, 1: 0.6}}}
    m = metrics(cells, 0.9, "dbr")
    assert m["ior_dbr"]["values"] == pytest.approx([0.05, -0.02])
    assert m["hlr"]["values"] == pytest.approx([0.3, 0.4])
    assert m["lrs"]["values"] == pytest.approx([lrs(0.05, 0.3), lrs(-0.02, 0.4)])


@pytest.mark.slow
def test_killed_evaluate_resumes_and_skips_finished_cells(small_store, fmnist_test_shards, tmp_path,
                                                          single_thread) -> None:
    seen: list[str] = []

    def stop_after_two(task: str, done: int, total: int | None) -> None:
        if task == "evaluate cells":
            seen.append(task)
            if done == 2:
                raise KeyboardInterrupt

    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        evaluate_store(small_store, fmnist_test_shards, work, seeds=2, labels=["onehot", "dbr"], protocol=PROTO,
                       progress=stop_after_two)
    assert len(list((work / "cells").glob("*.json"))) == 2
    again = evaluate_store(small_store, fmnist_test_shards, work, seeds=2, labels=["onehot", "dbr"],
                           protocol=PROTO)
    assert again["cells_resumed"] == 2 and len(again["cells"]) == 4
    fresh = evaluate_store(small_store, fmnist_test_shards, tmp_path / "fresh", seeds=2, labels=["onehot", "dbr"],
                           protocol=PROTO)
    assert [c["top1"] for c in again["cells"]] == [c["top1"] for c in fresh["cells"]]  # deterministic
    with pytest.raises(NrrError, match="another store, data set or student protocol"):
        evaluate_store(small_store, fmnist_test_shards, work, seeds=2, labels=["onehot", "dbr"],
                       protocol=StudentProtocol(epochs=3))


def test_bad_inputs_are_one_line_errors(small_store, teacher, fmnist_train_shards, fmnist_test_shards, tmp_path,
                                        single_thread) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(small_store, bare)
    relabel(bare, teacher, 2, overwrite=True)  # distances but no soft labels
    with pytest.raises(NrrError, match="no full soft labels.*--full-softlabels"):
        evaluate_store(bare, fmnist_test_shards, tmp_path / "w1", labels=["kd"], protocol=PROTO)
    # A work folder belongs to one store: results of another are never reused.
    evaluate_store(small_store, fmnist_test_shards, tmp_path / "w0", labels=["onehot"], seeds=1, protocol=PROTO)
    with pytest.raises(NrrError, match="another store"):
        evaluate_store(bare, fmnist_test_shards, tmp_path / "w0", labels=["onehot"], seeds=1, protocol=PROTO)
    # A held-out set with other classes.
    other = tmp_path / "other"
    shutil.copytree(fmnist_test_shards, other)
    names = (other / "classes.txt").read_text().splitlines()
    (other / "classes.txt").write_text("\n".join(reversed(names)) + "\n")
    with pytest.raises(NrrError, match="classes .* differ"):
        evaluate_store(small_store, other, tmp_path / "w2", protocol=PROTO)
    # A store without a teacher record cannot have its baseline relabelled.
    from nrrstore.distill.baseline import random_real_store

    plain = random_real_store(fmnist_train_shards, tmp_path / "plain", 1, 3)
    r = evaluate_store(plain, fmnist_test_shards, tmp_path / "w3", train=fmnist_train_shards, seeds=1,
                       protocol=PROTO)  # one-hot only: no teacher needed
    assert set(r["table"]) == {"store", "random"}
    relabel(plain, teacher, 2)
    man = json.loads((plain / "manifest.json").read_text())
    assert man["teacher"]["sha256"]
    with pytest.raises(NrrError, match="not the one that labelled"):
        evaluate_store(plain, fmnist_test_shards, tmp_path / "w4", train=fmnist_train_shards,
                       teacher=ROOT / "data" / "teachers" / "convnet3-fmnist.pt", protocol=PROTO)


def test_cli_evaluate_table_json_plot_and_errors(small_store, fmnist_test_shards, tmp_path) -> None:
    from nrrstore_cli.main import app

    runner = CliRunner()
    work = tmp_path / "w"
    res = runner.invoke(app, ["evaluate", str(small_store), "--val", str(fmnist_test_shards), "--seeds", "1",
                              "--epochs", "1", "--labels", "dbr,onehot", "--work", str(work), "--json",
                              "--plot", str(tmp_path / "bars.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every top-level JSON key is documented in README's evaluate section.
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### evaluate"):]
    for key in out:
        assert re.search(rf"`{key}`", section), f"JSON key {key!r} is not documented in README"
    res = runner.invoke(app, ["evaluate", str(small_store), "--val", str(fmnist_test_shards), "--labels", "bogus",
                              "--work", str(work)])
    assert res.exit_code == 1 and "unknown label kind" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_relabelled_store_keeps_its_teacher_path_for_evaluate(small_store, teacher, fmnist_train_shards,
                                                               fmnist_test_shards, tmp_path, single_thread) -> None:
    """relabel writes the same teacher record as distill (with ``spec``), so `evaluate --train` without
    ``--teacher`` finds the teacher the store records and relabels the random-real baseline with it."""
    from nrrstore.models.checkpoint import teacher_record
    from nrrstore_cli.main import app

    rec = Store(small_store).manifest.teacher
    assert rec == teacher_record(teacher) and rec["spec"] == teacher.spec
    res = CliRunner().invoke(app, ["evaluate", str(small_store), "--val", str(fmnist_test_shards), "--train",
                                   str(fmnist_train_shards), "--seeds", "1", "--epochs", "1", "--labels", "dbr",
                                   "--work", str(tmp_path / "w"), "--json"])
    assert res.exit_code == 0, res.output
    assert Store(tmp_path / "w" / "random-s0").manifest.teacher["sha256"] == teacher.sha256
    assert json.loads(res.stdout)["metrics"]["ior_dbr"]["n"] == 1


def test_verify_notes_a_teacher_record_that_does_not_resolve(small_store, teacher, tmp_path, single_thread) -> None:
    from nrrstore.models import load_teacher
    from nrrstore_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(small_store), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["teacher_record"] is None, res.output
    moved = tmp_path / "store"
    shutil.copytree(small_store, moved)
    copy = tmp_path / "t.pt"
    shutil.copyfile(teacher.spec, copy)
    relabel(moved, load_teacher(copy), 1, overwrite=True)
    copy.unlink()  # the checkpoint the store records is gone
    res = runner.invoke(app, ["verify", str(moved)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{moved}: ok" and "note: the recorded teacher" in lines[1] and "not found here" in lines[1]
