"""`evaluate`: every cell, the random-real baseline, DD-Ranking metrics, resume, and bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
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
    calls: list[tuple[str, int, int | None]] = []
    r = evaluate_store(small_store, fmnist_test_shards, tmp_path / "work", train=fmnist_train_shards,
                       teacher=teacher, seeds=2, protocol=PROTO, full_acc=0.9,
                       progress=lambda task, done, total: calls.append((task, done, total)))
    assert r["labels"] == ["dbr", "kd", "onehot"]
    overall = [(done, total) for task, done, total in calls if task == "evaluate (student steps)"]
    assert [d for d, _ in overall] == sorted(d for d, _ in overall) and overall[-1][0] == overall[-1][1]
    assert any(task == "store dbr seed 0: test on --val (images)" for task, _, _ in calls)  # a bar of its own
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
    assert res.exit_code == 2 and "--labels: 'bogus' is not one of" in res.stderr, res.stderr  # a usage error
    assert len(res.stderr.strip().splitlines()) == 1


# An evaluate result as the chart reads it: two image sets, and three label kinds that cost bytes per view.
RESULT = {
    "labels": ["dbr", "topk:2", "dbrc:1", "onehot"], "ipc": 10, "seeds": 3,
    "label_bytes": {"codecs": {"dbr": 4.0, "topk:2": 8.0, "dbrc:1": 12.0}},
    "table": {"store": {"dbr": {"mean": 0.71, "std": 0.01}, "topk:2": {"mean": 0.69, "std": 0.02},
                        "dbrc:1": {"mean": 0.74, "std": 0.015}, "onehot": {"mean": 0.55, "std": 0.03}},
              "random": {"dbr": {"mean": 0.61, "std": 0.01}, "onehot": {"mean": 0.45, "std": 0.03}}},
}


def test_chart_bars_error_bars_and_front() -> None:
    from matplotlib.container import BarContainer

    from nrrstore.plots import _result_figure

    bars, front = _result_figure(RESULT).axes
    store, random = [c for c in bars.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in store.patches] == pytest.approx([71, 69, 74, 55])  # top-1 in %
    assert [p.get_height() for p in random.patches] == pytest.approx([61, 45])
    assert store.errorbar is not None
    spans = [sorted(seg[:, 1]) for seg in store.errorbar.lines[2][0].get_segments()]
    assert spans == [pytest.approx([m - s, m + s]) for m, s in ((71, 1), (69, 2), (74, 1.5), (55, 3))]  # +- std
    legend = bars.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["distilled store", "random real images"]
    assert front.get_xscale() == "log"
    line = next(ln for ln in front.lines if str(ln.get_label()).startswith("front"))
    assert np.asarray(line.get_xdata()).tolist() == [4.0, 12.0]  # dbr, dbrc:1; topk:2 costs more than dbr, scores less
    assert np.asarray(line.get_ydata()).tolist() == pytest.approx([71.0, 74.0])
    onehot = next(ln for ln in front.lines if str(ln.get_label()).startswith("one-hot"))
    assert onehot.get_linestyle() == "--" and np.asarray(onehot.get_ydata()).tolist() == pytest.approx([55.0, 55.0])
    one_kind = dict(RESULT, label_bytes={"codecs": {"dbr": 4.0}})
    assert len(_result_figure(one_kind).axes) == 1  # no accuracy-per-byte panel for a single costed kind


@pytest.mark.parametrize(("ext", "magic"), [("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_chart_format_follows_the_extension_and_is_reproducible(tmp_path, ext, magic) -> None:
    from nrrstore.plots import plot_result

    first = plot_result(RESULT, tmp_path / f"bars.{ext}").read_bytes()
    assert first.startswith(magic)
    assert plot_result(RESULT, tmp_path / f"bars.{ext}", overwrite=True).read_bytes() == first  # same bytes
    with pytest.raises(NrrError, match="already exists"):
        plot_result(RESULT, tmp_path / f"bars.{ext}")
    assert [p.name for p in tmp_path.iterdir()] == [f"bars.{ext}"]  # no temporary file left
    if ext == "svg":
        text = first.decode()
        for label in ("distilled store", "random real images", "on the front", "one-hot 55.0 (no label bytes)",
                      "accuracy per label byte, IPC 10", "label bytes per view (log scale)", "student top-1 (%)"):
            assert f">{label}<" in text, label


def test_cli_evaluate_checks_the_chart_before_any_work(tmp_path, monkeypatch) -> None:
    """A wrong extension, or no matplotlib, is one line before the store is even opened (it does not exist)."""
    from nrrstore_cli.main import app

    runner = CliRunner()
    args = ["evaluate", str(tmp_path / "no-store"), "--val", str(tmp_path / "no-val"), "--work", str(tmp_path / "w")]
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "bars.jpg")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines() == [(f"nrrstore: {tmp_path / 'bars.jpg'}: the file extension decides the "
                                                "chart's format: give one of .png, .pdf, .svg (not '.jpg')")]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as when it is not installed
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "bars.png")])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        f"nrrstore: {tmp_path / 'bars.png'}: the chart needs matplotlib: pip install 'nrrstore[plots]'"]
    res = runner.invoke(app, args)  # without --plot, evaluate gets as far as the missing store
    assert res.exit_code == 1 and "no-store" in res.stderr and "matplotlib" not in res.stderr
    assert not any(tmp_path.iterdir())


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
