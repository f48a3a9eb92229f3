"""N4 (issue 27): each stage's throughput at 128 px on real photos, beside the bare model's, in one run.

The photos are the Imagenette train part (README's "Imagenette at 128 px" recipe), the model the shipped
teacher (ResNet-18, 128 px). Every stage runs through the library as a user runs it; its floor is the same
model doing only the arithmetic the stage cannot avoid, on tensors already in memory, measured right after
the stage at the same thread count:

- CIDD (images/s of source images): ``distill --method rded`` with a pool of ``--mipc`` images per class;
  floor: the teacher's forward over ``num_crop`` crops per image (the candidates CIDD scores), batch 100.
- NRR (image-steps/s): ``distill --method nrr`` with ``--nrr-iterations`` steps; floor: forward+backward to
  the input at NRR's batch (the class group), the step NRR takes.
- relabel (views/s): ``relabel`` of a 100-image store (``--relabel-epochs`` epochs, DBR + soft labels); floor:
  the teacher's forward at relabel's batch.
- student (images/s): ``train_student`` (ResNet-18, ``--student-epochs`` epochs, DBR labels, batch 50,
  without its test pass); floor: forward+backward+AdamW step at batch 50.

    python benchmarks/stage_costs.py --train /work/runs/inet128/train --json benchmarks/results/n4-stage-costs-128.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _provenance import provenance  # benchmarks/ is on sys.path when a script runs

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.models.checkpoint import Teacher
from nrrstore.models.registry import build_model
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.student import train_student


def _rate(fn: Any, items: int, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return items * repeat / (time.perf_counter() - t0)


def forward_floor(t: Teacher, batch: int, size: int) -> float:
    x = torch.randn(batch, 3, size, size)
    model = t.model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return _rate(run, batch)


def input_grad_floor(t: Teacher, batch: int, size: int) -> float:
    x = torch.randn(batch, 3, size, size, requires_grad=True)
    y = torch.arange(batch) % 10
    model = t.model.eval()

    def run() -> None:
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, x)

    return _rate(run, batch)


def train_floor(batch: int, size: int) -> float:
    model = build_model("resnet18", 10, 3, size, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x, y = torch.randn(batch, 3, size, size), torch.arange(batch) % 10
    model.train()

    def run() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _rate(run, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="the Imagenette train part (128 px shards)")
    ap.add_argument("--val", help="held-out shards for the student's (untimed) test pass (default: --train)")
    ap.add_argument("--teacher", default=str(ROOT / "data" / "teachers" / "resnet18-imagenette.pt"))
    ap.add_argument("--mipc", type=int, default=20, help="CIDD's pool per class")
    ap.add_argument("--nrr-iterations", type=int, default=20)
    ap.add_argument("--relabel-epochs", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "stage_costs")
    ap.add_argument("--json", type=Path, help="also write the figures and their provenance here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    t = load_teacher(a.teacher)
    size = t.image_size
    rows: list[dict[str, Any]] = []

    def row(stage: str, unit: str, figure: float, floor: float) -> None:
        rows.append({"stage": stage, "unit": unit, "figure": round(figure, 2), "floor": round(floor, 2),
                     "ratio": round(floor / figure, 3)})
        print(f"{stage:8} {figure:9.2f} {unit:14} floor {floor:9.2f}   floor/figure {floor / figure:5.2f}x", flush=True)

    cfg = method_config("rded", 1, size, cidd={"mipc": a.mipc})
    s = distill(a.train, t, a.work / "rded", cfg).summary
    row("CIDD", "images/s", s["images_read"] / s["cidd_s"], forward_floor(t, 100, size) / cfg.cidd.num_crop)

    cfg = method_config("nrr", 1, size, cidd={"mipc": a.mipc}, nrr={"iterations": a.nrr_iterations})
    s = distill(a.train, t, a.work / "nrr", cfg).summary
    steps = s["images"] * a.nrr_iterations
    row("NRR", "image-steps/s", steps / s["nrr_s"], input_grad_floor(t, s["images"], size))

    store = a.work / "random"
    distill(a.train, t, store, method_config("random", 10, size, cidd={"mipc": 10}))
    batch = 256
    r = relabel(store, t, a.relabel_epochs, AugRecipe(size=size, seed=0), full_softlabels=True, batch_size=batch)
    row("relabel", "views/s", r["views"] / r["seconds"], forward_floor(t, min(batch, r["images"]), size))

    st = train_student(store, a.val or a.train, arch="resnet18", epochs=a.student_epochs, labels="dbr",
                       batch_size=50, eval_batch_size=100)
    seconds = sum(h["seconds"] for h in st["history"][1:])  # the first epoch warms up, as the floor's does
    row("student", "images/s", 100 * (a.student_epochs - 1) / seconds, train_floor(50, size))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"what": "issue 27 N4: stage costs at 128 px on the Imagenette train part",
                                      "size": size, "teacher": a.teacher, "rows": rows, **provenance(a.threads)},
                                     indent=1) + "\n")


if __name__ == "__main__":
    main()
