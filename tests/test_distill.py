"""`distill` end to end on the embedded Fashion-MNIST: store, determinism, resume, ranks, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.errors import NrrError, ResumeMismatchError
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.models import build_model, load_teacher, save_teacher
from tests._real import FMNIST_CLASSES, FMNIST_TRAIN
from tests._teacher import one_thread, teacher_path

ROOT = Path(__file__).resolve().parents[1]
SMALL: dict[str, Any] = {"cidd": {"mipc": 12, "num_crop": 3}, "nrr": {"iterations": 3}, "classes_per_pass": 5}  # two class groups


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with one_thread():
        yield


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(out: Path, method: str = "nrr", ipc: int = 2, **kw):
    teacher = load_teacher(teacher_path())
    cfg = method_config(method, ipc, teacher.image_size, **{**SMALL, **kw})
    return distill(FMNIST_TRAIN, teacher, out, cfg)


def test_distill_writes_a_sound_store(tmp_path: Path) -> None:
    result = _run(tmp_path / "s", save_cams=True)
    store = Store(tmp_path / "s")
    m = store.manifest
    assert m.num_images == 20 and m.per_class == [2] * 10 and m.classes == FMNIST_CLASSES
    assert verify_store(tmp_path / "s") == []
    # Classes are interleaved (slot-major) so any run of images spans classes.
    assert store.labels()[:10].tolist() == list(range(10))
    assert m.method["name"] == "nrr-dd" and m.method["cidd"]["select"] == "low" and m.method["nrr"]["iterations"] == 3
    assert m.teacher["sha256"] and m.normalization == {"mean": [0.286], "std": [0.353]}
    # The preset records every chosen default, so a store says exactly how it was made.
    from nrrstore.distill.cidd_config import CiddConfig
    from nrrstore.distill.nrr import NrrConfig

    assert set(m.method["cidd"]) == set(CiddConfig.__dataclass_fields__)
    assert set(m.method["nrr"]) == set(NrrConfig.__dataclass_fields__)
    preset = method_config("nrr", 2, 28)
    for name in ("per_image", "select", "cam_top", "cam_score", "correct_only", "sources", "factor", "scale"):
        assert m.method["cidd"][name] == preset.cidd.to_dict()[name], name
    for name in ("eps", "lr", "optimizer", "alpha_bn", "betas"):
        assert m.method["nrr"][name] == preset.nrr.to_dict()[name], name
    assert m.labels["cams"]["shape"] == [20, 28, 28]
    img = store.get("c00003_000001")
    assert img.label == 3 and img.pixels.shape == (28, 28)
    patch = img.meta["patches"][0]
    assert patch["key"].startswith("train_") and len(patch["box"]) == 4 and patch["cam_ratio"] is not None
    assert result.summary["images"] == 20 and result.summary["cidd_s"] > 0
    assert not (tmp_path / ".work-s").exists()


def test_nrr_preset_pool_leaves_the_low_confidence_choice_room() -> None:
    # The study's default: 1.5x the real images whose CAM top half fills the IPC, so CIDD's low-confidence
    # choice keeps 10 of 15 high-CAM crops at IPC 10; an explicit --mipc wins; RDED keeps its own 300.
    assert [method_config("nrr", ipc, 28).cidd.mipc for ipc in (1, 10, 50)] == [3, 30, 150]
    big = method_config("nrr", 10, 224)
    assert (big.cidd.factor, big.cidd.mipc) == (2, 120)
    assert method_config("nrr", 10, 28, cidd={"mipc": 300}).cidd.mipc == 300
    assert method_config("nrr", 10, 28, cidd={"cam_top": 1.0}).cidd.mipc == 15
    rded = method_config("rded", 10, 28)
    assert (rded.cidd.mipc, rded.cidd.scale, rded.cidd.correct_only, rded.nrr.refine) == (300, (0.08, 1.0), False, False)
    nrr = method_config("nrr", 10, 28)
    assert (nrr.cidd.scale, nrr.cidd.correct_only, nrr.nrr.alpha_bn, nrr.cidd.select) == ((0.5, 1.0), True, 1.0, "low")


def test_rded_and_random_presets(tmp_path: Path) -> None:
    _run(tmp_path / "rded", method="rded")
    _run(tmp_path / "rand", method="random")
    rded, rand = Store(tmp_path / "rded"), Store(tmp_path / "rand")
    assert rded.manifest.method["nrr"]["refine"] is False and rded.manifest.method["cidd"]["select"] == "high"
    # Random real images are whole source images, unchanged.
    src = rand.get(0).meta["patches"][0]
    assert src["box"] == [0, 0, 28, 28]
    from nrrstore.sources.shards import iter_samples

    original = next(s.image for s in iter_samples(FMNIST_TRAIN) if s.key == src["key"])
    assert np.array_equal(rand.get(0).pixels, original)


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    _run(tmp_path / "a")
    _run(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


KILL = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
import torch; torch.set_num_threads(1)
from nrrstore.distill.pipeline import distill, method_config
from nrrstore.models import load_teacher
t = load_teacher({teacher!r})
cfg = method_config("nrr", 2, 28, cidd={{"mipc": 12, "num_crop": 3}}, nrr={{"iterations": 3}}, classes_per_pass=5)
def hook(c):
    if c == 4:
        os.kill(os.getpid(), signal.SIGKILL)
distill({data!r}, t, {out!r}, cfg, after_class=hook)
"""


@pytest.mark.slow
def test_killed_distill_resumes_to_identical_store(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _run(ref)
    out = tmp_path / "s"
    script = KILL.format(root=str(ROOT), teacher=str(teacher_path()), data=str(FMNIST_TRAIN), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    done = sorted(p.name for p in (tmp_path / ".work-s").glob("class-*.json"))
    assert done == [f"class-{c:05d}.json" for c in range(5)]
    # Other arguments on the partial run are refused...
    with pytest.raises(ResumeMismatchError, match="different arguments"):
        _run(out, ipc=3)
    # ...the same ones continue at class 5 and end byte-identical to the uninterrupted run.
    result = _run(out)
    assert result.summary["classes_done_before"] == 5
    assert _files(out) == _files(ref)


@pytest.mark.slow
def test_two_ranks_give_the_same_images(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _run(ref)
    script = tmp_path / "rank.py"
    script.write_text(
        "import sys, os, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import torch; torch.set_num_threads(1)\n"
        "from nrrstore.distill.pipeline import distill, method_config\n"
        "from nrrstore.models import load_teacher\n"
        f"t = load_teacher({str(teacher_path())!r})\n"
        "cfg = method_config('nrr', 2, 28, cidd={'mipc': 12, 'num_crop': 3}, nrr={'iterations': 3}, classes_per_pass=5)\n"
        f"r = distill({str(FMNIST_TRAIN)!r}, t, {str(tmp_path / 'two')!r}, cfg)\n"
        f"open({str(tmp_path)!r} + f'/summary-{{r.summary[\"rank\"]}}.json', 'w').write(json.dumps(r.summary))\n"
    )
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port, so concurrent test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # One file per rank: two ranks printing to one pipe can interleave their lines.
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("summary-*.json"))]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and all(s["world_size"] == 2 for s in summaries)
    assert _files(tmp_path / "two") == _files(ref)


def test_bad_inputs(tmp_path: Path) -> None:
    teacher = load_teacher(teacher_path())
    # Too few images per class: say how many are missing, per class.
    cfg = method_config("rded", 310, 28, cidd={"mipc": 320, "num_crop": 1})
    with pytest.raises(NrrError, match=r"class 0 \(T-shirt/top\): 300 candidate images, need 310 \(10 missing\)"):
        distill(FMNIST_TRAIN, teacher, tmp_path / "few", cfg)
    assert not (tmp_path / "few").exists()
    # Class count of teacher and data differ.
    with one_thread():
        small = build_model("convnet3", 5, 1, 28, seed=0, width=8)
    save_teacher(tmp_path / "t5.pt", small, {"arch": "convnet3", "arch_kwargs": {"width": 8}, "num_classes": 5,
                                              "in_channels": 1, "image_size": 28, "classes": list("abcde"),
                                              "normalization": {"mean": [0.5], "std": [0.5]}})
    cfg = method_config("nrr", 1, 28, **SMALL)
    with pytest.raises(NrrError, match="10 classes .* teacher has 5"):
        distill(FMNIST_TRAIN, load_teacher(tmp_path / "t5.pt"), tmp_path / "o5", cfg)
    # Image size differs from the teacher's input.
    big = build_model("convnet3", 10, 1, 32, seed=0, width=8)
    save_teacher(tmp_path / "t32.pt", big, {"arch": "convnet3", "arch_kwargs": {"width": 8}, "num_classes": 10,
                                             "in_channels": 1, "image_size": 32, "classes": FMNIST_CLASSES,
                                             "normalization": {"mean": [0.5], "std": [0.5]}})
    with pytest.raises(NrrError, match="is 28x28x1, the teacher takes 32x32x1"):
        distill(FMNIST_TRAIN, load_teacher(tmp_path / "t32.pt"), tmp_path / "o32", method_config("nrr", 1, 32, **SMALL))
    # An output folder that holds something else.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(NrrError, match="not empty"):
        distill(FMNIST_TRAIN, teacher, tmp_path / "busy", cfg)
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "x"


def test_cli_distill_json_and_bad_teacher(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nrrstore_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--in", str(FMNIST_TRAIN), "--teacher", str(teacher_path()), "--ipc", "1",
                              "--mipc", "6", "--num-crop", "2", "--iterations", "2", "--out", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 10 and {"cidd_s", "nrr_s", "assemble_s", "total_s"} <= set(summary)
    assert summary["relabel"]["epochs"] == 300  # the DBR table is written by default, for 300 student epochs
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    res = runner.invoke(app, ["distill", "--in", str(FMNIST_TRAIN), "--teacher", str(tmp_path / "evil.pt"), "--ipc", "1",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "evil.pt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_default_image_encoding_by_size() -> None:
    """JPEG 90 from 128 px up (measured in benchmarks/jpeg_quality.py), lossless PNG below; explicit choices kept."""
    from nrrstore.distill.pipeline import default_image_encoding

    assert default_image_encoding(28) == ("png", None) and default_image_encoding(224) == ("jpg", 90)
    assert (method_config("nrr", 1, 224).image_format, method_config("nrr", 1, 224).quality) == ("jpg", 90)
    assert (method_config("nrr", 1, 32).image_format, method_config("nrr", 1, 32).quality) == ("png", None)
    assert method_config("nrr", 1, 224, image_format="png").quality is None
    assert method_config("nrr", 1, 28, image_format="jpg").quality == 95  # recorded as really used
    assert method_config("nrr", 1, 224, quality=80).to_dict()["quality"] == 80
