"""`--protocol rded`: RDED's evaluation reproduced from stored full soft labels (BatchNorm ConvNets, KL at T 20
without T**2, AdamW with a per-epoch cosine to half, best of the tests in the last 20% beside the last epoch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from nrrstore.errors import NrrError
from nrrstore.evaluation import StudentProtocol, evaluate_store, format_table
from nrrstore.format.reader import Store
from nrrstore.train.losses import FP16_PROB_FLOOR, kd_loss
from nrrstore.train.student import lr_factor, train_student
from nrrstore_cli import train_cmd
from tests._builders import labelled_fmnist_store, make_app, write_fmnist_store
from tests._teacher import one_thread, teacher_path
from tests.conftest import FMNIST_SUBSET

VAL = FMNIST_SUBSET / "test"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """100 real images (10 per class) with 10 epochs of soft labels, as RDED's protocol needs."""
    return labelled_fmnist_store(tmp_path_factory.mktemp("rded") / "s", 10)


def test_kd_without_t_squared_is_rded_kl() -> None:
    """RDED's loss: nn.KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)), no T**2 factor."""
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10) * 5
    rded = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / 20, 1), F.softmax(t / 20, 1))
    probs = torch.softmax(t, 1)
    assert torch.allclose(kd_loss(s, probs, T=20, from_logits=False, t_squared=False), rded, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, T=20, t_squared=True), rded * 400, rtol=1e-5)


def test_rded_schedule_decays_per_epoch_to_half() -> None:
    """LambdaLR(0.5 * (1 + cos(pi * epoch / E / 2))), stepped once per epoch: 1 at the start, above half at the end."""
    assert lr_factor("rded", 0, 0, 100, 10) == 1.0
    assert lr_factor("rded", 9, 95, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 20)))
    assert lr_factor("rded", 9, 90, 100, 10) == lr_factor("rded", 9, 99, 100, 10)  # constant within an epoch
    assert lr_factor("nrrstore", 9, 99, 100, 10) < 0.01  # the project's own cosine reaches 0


def test_rded_student_reports_best_of_last_20_percent(store: Path) -> None:
    with one_thread(), pytest.warns(UserWarning, match="cycle"):  # 20 epochs over the 10 stored ones
        r = train_student(store, VAL, arch="convnet3", epochs=20, labels="kd", batch_size=25, protocol="rded",
                          arch_kwargs={"width": 16}, cycle=True, eval_batch_size=500)
    assert r["protocol"] == "rded" and r["kd_temperature"] == 20.0 and r["lr"] == 1e-3 and r["weight_decay"] == 0.01
    assert r["arch_kwargs"] == {"width": 16, "norm": "batch"}
    model = r["model"]
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in model.modules())
    tested = [h["epoch"] for h in r["history"] if "top1" in h]
    assert tested == [19]  # epochs 9 and 19 are RDED's tests; only 19 lies after 80% of 20
    assert r["top1_best_last20"] == r["top1"] > 0.2
    lrs = [h["lr"] for h in r["history"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 19 / 40)))


def test_rded_best_is_the_maximum_over_its_tests(store: Path) -> None:
    with one_thread(), pytest.warns(UserWarning, match="cycle"):
        r = train_student(store, VAL, arch="convnet3", epochs=60, labels="kd", batch_size=25, protocol="rded",
                          arch_kwargs={"width": 8}, cycle=True, eval_batch_size=500)
    tests = {h["epoch"]: h["top1"] for h in r["history"] if "top1" in h}
    assert sorted(tests) == [49, 59]
    assert r["top1_best_last20"] == max(tests.values()) and r["top1"] == tests[59]


def test_rded_protocol_needs_soft_labels_and_a_known_name(store: Path) -> None:
    with pytest.raises(NrrError, match="full soft labels: use labels kd, not dbr"):
        train_student(store, VAL, epochs=1, labels="dbr", protocol="rded")
    with pytest.raises(NrrError, match="unknown student protocol 'sre2l'"):
        train_student(store, VAL, epochs=1, labels="kd", protocol="sre2l")
    with pytest.raises(NrrError, match="unknown student protocol"):
        StudentProtocol(protocol="RDED")


def test_student_protocol_resolves_values_and_keeps_old_records() -> None:
    assert StudentProtocol(protocol="rded").kd_temperature == 20.0
    assert StudentProtocol(protocol="rded", kd_temperature=4.0).kd_temperature == 4.0
    plain = StudentProtocol().to_dict()
    assert "protocol" not in plain and plain["kd_temperature"] == 4.0 and plain["lr"] == 1e-3
    assert StudentProtocol(protocol="rded").to_dict()["protocol"] == "rded"


def test_table_labels_both_figures() -> None:
    cell = {"mean": 0.5, "std": 0.01, "n": 2, "values": [0.49, 0.51]}
    best = {"mean": 0.52, "std": 0.01, "n": 2, "values": [0.51, 0.53]}
    result = {"labels": ["kd"], "protocol": {"arch": "convnet3", "epochs": 300, "protocol": "rded"}, "seeds": 2,
              "val": "v", "ipc": 10, "table": {"store": {"kd": cell}}, "table_best_last20": {"store": {"kd": best}},
              "metrics": {}}
    text = format_table(result)
    assert "rded protocol" in text
    assert "distilled store, last epoch" in text and "50.00 +- 1.00" in text
    assert "distilled store, best of last 20%" in text and "52.00 +- 1.00" in text


def test_cli_train_student_protocol_rded(store: Path) -> None:
    runner = CliRunner()
    app = make_app(train_cmd)
    args = ["train-student", str(store), "--val", str(VAL), "--labels", "kd", "--epochs", "5", "--batch-size",
            "25", "--protocol", "rded"]
    with one_thread():
        r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["protocol"] == "rded" and out["kd_temperature"] == 20.0 and "top1_best_last20" in out
    with one_thread():
        r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "rded protocol" in r.stdout and "best of the tests in the last 20% of epochs (RDED's figure)" in r.stdout
    r = runner.invoke(app, [*args[:4], "--labels", "dbr", "--protocol", "rded"])
    assert r.exit_code == 1 and "use labels kd, not dbr" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*args[:4], "--protocol", "bogus"])
    assert r.exit_code == 2


def test_cli_relabel_scale_sets_the_views_crop_range(tmp_path: Path) -> None:
    """RDED's evaluation crops 1/factor..1 of each image: relabel --scale records that range in the recipe."""
    path = tmp_path / "s"
    write_fmnist_store(path, per_class=3, shard_size=50)
    runner, app = CliRunner(), make_app(train_cmd)
    args = ["relabel", str(path), "--teacher", str(teacher_path()), "--epochs", "1", "--group-size", "10"]
    with one_thread():
        res = runner.invoke(app, [*args, "--scale", "0.5,1", "--full-softlabels", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["augmentation"]["scale"] == [0.5, 1.0]
    augmentation = Store(path).manifest.augmentation
    assert augmentation is not None and augmentation["scale"] == [0.5, 1.0]
    for bad in ("half", "0.5", "0.9,0.5"):
        res = runner.invoke(app, [*args, "--scale", bad, "--overwrite"])
        assert res.exit_code in (1, 2) and "scale" in res.output and "Traceback" not in res.output, (bad, res.output)


def test_evaluate_under_rded_protocol_names_it_and_both_figures(store: Path, tmp_path: Path) -> None:
    proto = StudentProtocol(arch="convnet3", epochs=3, batch_size=25, arch_kwargs={"width": 8}, protocol="rded")
    with one_thread():
        r = evaluate_store(store, VAL, tmp_path / "work", seeds=1, labels=["kd"], protocol=proto)
    assert r["protocol"]["protocol"] == "rded" and r["protocol"]["kd_temperature"] == 20.0
    cell = r["cells"][0]
    assert cell["top1_best_last20"] == cell["top1"]  # 3 epochs: the last is the only test
    assert r["table_best_last20"]["store"]["kd"]["mean"] == cell["top1"]
    assert "best of last 20%" in format_table(r)


def test_fp16_soft_labels_keep_their_small_classes_at_high_temperature() -> None:
    """A class whose probability underflows fp16 (the store's soft-label dtype) is tempered from 2**-25, not
    from float32's tiny: at T = 20 the loss then stays near the exact one instead of growing sevenfold."""
    z = torch.tensor([[12.0, 0.0, -6.0, -8.0, 3.0]])  # the last three round to 0 in fp16 probabilities
    p16 = torch.softmax(z, 1).half().float()
    assert int((p16 == 0).sum()) == 2
    student = torch.zeros(1, 5)
    exact = kd_loss(student, z, T=20, t_squared=False)
    floored = kd_loss(student, p16, T=20, from_logits=False, t_squared=False, prob_floor=FP16_PROB_FLOOR)
    tiny = kd_loss(student, p16, T=20, from_logits=False, t_squared=False)
    assert abs(float(floored - exact)) < 0.2 * float(exact)
    assert abs(float(tiny - exact)) > 5 * float(exact)
