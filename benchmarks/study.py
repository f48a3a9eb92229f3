"""The NRR-DD defaults study: which unpublished knobs make the `nrr` preset's images train the best students.

Data discipline: stores are distilled from a *training part* of the real training set and students are
scored on a *validation part* carved from the same training set (``prepare idx --limit 50000`` and
``--skip 50000``); the real test set is never read here. Each variant is a full pipeline replicate per
seed: ``distill --seed s`` (so the random choice of source images changes too), DBR relabeling of the
store with augmentation seed ``s``, then students with seed ``s``.

Variants are named in VARIANTS below (distill options on top of a preset, plus student options);
``--variants`` picks some. Every finished (variant, seed, labels) cell is a JSON file under ``--work``
and students checkpoint every epoch, so a killed study resumes where it stopped. ``--part i/n`` runs the
i-th of n interleaved slices of the cell list (two processes on two cores, each on one thread).

    python benchmarks/study.py --teacher T.pt --train fm/trainpart --val fm/valpart --ipc 10 --seeds 2 \\
        --variants random rded nrr nrr-correct --part 0/2
    python benchmarks/study.py ... --report          # the table of every finished cell
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _provenance import provenance  # benchmarks/ is on sys.path when a script runs

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.format.atomic import atomic_write_bytes
from nrrstore.format.codecs import label_mode
from nrrstore.labels.relabel import relabel
from nrrstore.models import load_teacher
from nrrstore.replay.recipe import AugRecipe
from nrrstore.train.student import train_student

# name -> (preset, cidd overrides, nrr overrides, student overrides). Every "nrr-*"/"g-*" row states its
# options on top of the preset as it stood before the study (PRE below: v0.1 defaults plus a seeded random
# choice of source images), so the rows keep their meaning now that the preset has the study's defaults;
# "nrr" alone is the preset as it is now.
PRE_CIDD: dict[str, Any] = {"correct_only": False, "scale": [0.08, 1.0], "mipc": 300}
PRE_NRR: dict[str, Any] = {"alpha_bn": 0.01}
V: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "random": ("random", {}, {}, {}),
    "rded": ("rded", {}, {}, {}),
    "nrr": ("nrr", {}, {}, {}),
    "nrr-v0.1": ("nrr", {}, {}, {}),
    "nrr-first": ("nrr", {"sources": "first"}, {}, {}),
    # selection
    "nrr-correct": ("nrr", {"correct_only": True}, {}, {}),
    "nrr-density": ("nrr", {"cam_score": "density"}, {}, {}),
    "nrr-excess": ("nrr", {"cam_score": "excess"}, {}, {}),
    "nrr-correct-excess": ("nrr", {"correct_only": True, "cam_score": "excess"}, {}, {}),
    "nrr-correct-score": ("nrr", {"correct_only": True, "per_image": "score"}, {}, {}),
    "nrr-camtop1": ("nrr", {"correct_only": True, "cam_top": 1.0}, {}, {}),
    "nrr-noref": ("nrr", {"correct_only": True}, {"refine": False}, {}),
    "nrr-whole": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {}, {}),
    "nrr-whole-noref": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {"refine": False}, {}),
    "nrr-whole-any": ("nrr", {"num_crop": 1, "scale": [1.0, 1.0]}, {}, {}),
    "nrr-s50": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {}, {}),
    "nrr-s50-score": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "per_image": "score"}, {}, {}),
    "nrr-f2": ("nrr", {"correct_only": True, "factor": 2}, {}, {}),
    "nrr-f2-excess": ("nrr", {"correct_only": True, "factor": 2, "cam_score": "excess"}, {}, {}),
    "nrr-f2-noref": ("nrr", {"correct_only": True, "factor": 2}, {"refine": False}, {}),
    # from here on: NRR refines mixed-class batches (class groups); the rows above refined one class per batch
    "g-s50": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {}, {}),
    "g-s50-noref": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"refine": False}, {}),
    "g-s50-bn1": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"alpha_bn": 1.0}, {}),
    "g-s50-lr.002": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"lr": 0.002}, {}),
    "g-s50-it50": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"iterations": 50}, {}),
    "g-s50-eps.3": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"eps": 0.3}, {}),
    "g-s50-m30": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {}, {}),
    "g-s50-any": ("nrr", {"scale": [0.5, 1.0]}, {}, {}),
    "g-whole": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {}, {}),
    "g-whole-bn1": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {"alpha_bn": 1.0}, {}),
    "g-whole-lr.002": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {"lr": 0.002}, {}),
    "rded-f2": ("rded", {"factor": 2}, {}, {}),
    "g-s50-bn10": ("nrr", {"correct_only": True, "scale": [0.5, 1.0]}, {"alpha_bn": 10.0}, {}),
    "g-s50-bn1-m20": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 20}, {"alpha_bn": 1.0}, {}),
    "g-s50-bn1-m30": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {"alpha_bn": 1.0}, {}),
    # on the chosen defaults' images (the g-s50-bn1-m30 store): the student's DBR objective, the NRR step
    "g-m30-adbr0.3": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {"alpha_bn": 1.0},
                      {"alpha_dbr": 0.3}),
    "g-m30-adbr3": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {"alpha_bn": 1.0},
                    {"alpha_dbr": 3.0}),
    "g-m30-l1": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {"alpha_bn": 1.0},
                 {"dbr_norm": "l1"}),
    "g-m30-sgd": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30},
                  {"alpha_bn": 1.0, "optimizer": "sgd", "lr": 30.0}, {}),
    "g-m30-eps.3": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 30}, {"alpha_bn": 1.0, "eps": 0.3},
                    {}),
    "g-s50-bn1-m40": ("nrr", {"correct_only": True, "scale": [0.5, 1.0], "mipc": 40}, {"alpha_bn": 1.0}, {}),
    "g-whole-bn1-m20": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0], "mipc": 20},
                        {"alpha_bn": 1.0}, {}),
    "g-whole-bn10": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0]}, {"alpha_bn": 10.0}, {}),
    "g-whole-bn10-m20": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0], "mipc": 20},
                         {"alpha_bn": 10.0}, {}),
    "g-whole-m20-noref": ("nrr", {"correct_only": True, "num_crop": 1, "scale": [1.0, 1.0], "mipc": 20},
                          {"refine": False}, {}),
    # refinement
    "nrr-bn0": ("nrr", {"correct_only": True}, {"alpha_bn": 0.0}, {}),
    "nrr-bn0.1": ("nrr", {"correct_only": True}, {"alpha_bn": 0.1}, {}),
    "nrr-bn1": ("nrr", {"correct_only": True}, {"alpha_bn": 1.0}, {}),
    "nrr-sgd": ("nrr", {"correct_only": True}, {"optimizer": "sgd", "lr": 30.0}, {}),
    "nrr-eps0.3": ("nrr", {"correct_only": True}, {"eps": 0.3}, {}),
    "nrr-eps0.8": ("nrr", {"correct_only": True}, {"eps": 0.8}, {}),
    "nrr-it100": ("nrr", {"correct_only": True}, {"iterations": 100}, {}),
    "nrr-it500": ("nrr", {"correct_only": True}, {"iterations": 500}, {}),
    "nrr-lr0.003": ("nrr", {"correct_only": True}, {"lr": 0.003}, {}),
    "nrr-lr0.03": ("nrr", {"correct_only": True}, {"lr": 0.03}, {}),
    # DBR loss (students) on random real images: the objective is the same for every image set
    "random-adbr0.3": ("random", {}, {}, {"alpha_dbr": 0.3}),
    "random-adbr0.1": ("random", {}, {}, {"alpha_dbr": 0.1}),
    "rded-adbr0.3": ("rded", {}, {}, {"alpha_dbr": 0.3}),
    "rded-adbr3": ("rded", {}, {}, {"alpha_dbr": 3.0}),
    "rded-adbr0.1": ("rded", {}, {}, {"alpha_dbr": 0.1}),
    "rded-l1": ("rded", {}, {}, {"dbr_norm": "l1"}),
    "random-l1": ("random", {}, {}, {"dbr_norm": "l1"}),
    "random-smoothl1": ("random", {}, {}, {"dbr_norm": "smooth_l1"}),
    # DBR loss (students), on the nrr-correct images
    "nrr-adbr0.3": ("nrr", {"correct_only": True}, {}, {"alpha_dbr": 0.3}),
    "nrr-adbr3": ("nrr", {"correct_only": True}, {}, {"alpha_dbr": 3.0}),
    "nrr-l1": ("nrr", {"correct_only": True}, {}, {"dbr_norm": "l1"}),
    "nrr-smoothl1": ("nrr", {"correct_only": True}, {}, {"dbr_norm": "smooth_l1"}),
    "nrr-kdT20": ("nrr", {"correct_only": True}, {}, {"kd_temperature": 20.0}),
}
V.update({n: (p, {**PRE_CIDD, **c}, {**PRE_NRR, **r}, st) for n, (p, c, r, st) in V.items()
          if p == "nrr" and n != "nrr"})
# CIFAR-10 (issue 14): "c-" rows state their options on top of the presets as they are now (not PRE), so
# "nrr" is the Fashion-MNIST study's defaults as they are. The paper's NRR-DD: RDED's crop protocol (mipc 300,
# scale 0.08-1, any prediction), low-confidence patches among the high-CAM half, SRe2L's alpha_bn 0.01.
PAPER_CIDD: dict[str, Any] = {"correct_only": False, "scale": [0.08, 1.0], "mipc": 300}
PAPER_NRR: dict[str, Any] = {"alpha_bn": 0.01}
REFINE: dict[str, Any] = {"refine": True, "alpha_bn": 1.0}  # NRR as the nrr preset runs it, on other selections
V.update({
    "c-paper-f1": ("nrr", {**PAPER_CIDD, "factor": 1}, PAPER_NRR, {}),
    "c-paper-f2": ("nrr", {**PAPER_CIDD, "factor": 2}, PAPER_NRR, {}),
    "c-paper-f2-sgd": ("nrr", {**PAPER_CIDD, "factor": 2}, {**PAPER_NRR, "optimizer": "sgd", "lr": 30.0}, {}),
    "c-f2": ("nrr", {"factor": 2}, {}, {}),
    "c-noref": ("nrr", {}, {"refine": False}, {}),
    "c-f2-noref": ("nrr", {"factor": 2}, {"refine": False}, {}),
    "c-eps.3": ("nrr", {}, {"eps": 0.3}, {}),
    "c-eps.8": ("nrr", {}, {"eps": 0.8}, {}),
    "c-it50": ("nrr", {}, {"iterations": 50}, {}),
    "c-it500": ("nrr", {}, {"iterations": 500}, {}),
    "c-lr.003": ("nrr", {}, {"lr": 0.003}, {}),
    "c-lr.03": ("nrr", {}, {"lr": 0.03}, {}),
    "c-bn.01": ("nrr", {}, {"alpha_bn": 0.01}, {}),
    "c-bn10": ("nrr", {}, {"alpha_bn": 10.0}, {}),
    "c-sgd": ("nrr", {}, {"optimizer": "sgd", "lr": 30.0}, {}),
    "c-m300": ("nrr", {"mipc": 300}, {}, {}),
    "c-rded-nrr": ("rded", {}, REFINE, {}),
    "c-rded-f2": ("rded", {"factor": 2}, {}, {}),
    "c-rded-f2-nrr": ("rded", {"factor": 2}, REFINE, {}),
    "c-random-nrr": ("random", {}, REFINE, {}),
    "c-rded-nrr-lr.002": ("rded", {}, {**REFINE, "lr": 0.002}, {}),
    "c-rded-nrr-it50": ("rded", {}, {**REFINE, "iterations": 50}, {}),
    "c-rded-nrr-bn.01": ("rded", {}, {**REFINE, "alpha_bn": 0.01}, {}),
})
# Imagenette at 128 px (issue 27): factor 2 by the size. "c-paper-f2" is NRR-DD as the paper describes it; the
# "i-" rows flip one choice of it (high confidence = RDED's choice among the high-CAM half; no refinement) or of
# the nrr preset (high confidence).
V.update({
    "i-paper-high": ("nrr", {**PAPER_CIDD, "factor": 2, "select": "high"}, PAPER_NRR, {}),
    "i-paper-noref": ("nrr", {**PAPER_CIDD, "factor": 2}, {**PAPER_NRR, "refine": False}, {}),
    "i-high": ("nrr", {"select": "high"}, {}, {}),
})
# The student's DBR objective on the presets' images as they are now (issue 14's choice of the students' default).
# Not "c-" rows, so they share the stores of "random", "rded" and "nrr".
V.update({
    "nrr-now-l1": ("nrr", {}, {}, {"dbr_norm": "l1"}),
    # issue 15: the codec students' objective (KD on the implied distribution, with the class prior or an even
    # fill of the unstored mass; or DBR's objective over every stored distance) and its weight
    "nrr-kd": ("nrr", {}, {}, {"codec_loss": "kd"}),
    "nrr-kd-fill-uniform": ("nrr", {}, {}, {"codec_loss": "kd", "codec_fill": "uniform"}),
    "nrr-kd-t1": ("nrr", {}, {}, {"codec_loss": "kd", "kd_temperature": 1.0}),
    "nrr-match": ("nrr", {}, {}, {"codec_loss": "match"}),
    "nrr-match-a0.5": ("nrr", {}, {}, {"codec_loss": "match", "alpha_dbr": 0.5}),
    "nrr-match-a2": ("nrr", {}, {}, {"codec_loss": "match", "alpha_dbr": 2.0}),
})
LABELS = ("dbr", "onehot", "kd")


def store_key(name: str) -> str:
    """Variants that differ only in student options share one distilled store. ("g-" rows were made after
    NRR started refining mixed-class batches, so they never reuse a store of the rows above them.)"""
    preset, cidd, nrr, _ = V[name]
    return json.dumps([preset, cidd, nrr, name.startswith(("g-", "c-"))], sort_keys=True)


def _codecs(args: argparse.Namespace) -> list[str]:
    """The array codecs a store must hold (issue 15): --codecs (a superset, so that runs of other cells on the
    same stores never relabel them under each other) and the cells' own, written by one relabel pass."""
    wanted = [c for c in (args.codecs or "").split(",") if c] + [lab for lab in args.labels if ":" in lab]
    return [c for c in dict.fromkeys(label_mode(c) for c in wanted) if c != "dbrc:0"]


def _pruned(args: argparse.Namespace) -> str:
    """Folder/cell suffix of label pruning: labels for --label-epochs E' < E distinct epochs, cycled."""
    return f"-le{args.label_epochs}" if args.label_epochs and args.label_epochs < args.epochs else ""


def make_store(name: str, seed: int, args: argparse.Namespace, teacher: Any) -> Path:
    preset, cidd, nrr, _ = V[name]
    sk = store_key(name)
    tag = next(n for n in V if store_key(n) == sk)  # the first variant with these images names the folder
    out = args.work / "stores" / f"{tag}-ipc{args.ipc}-s{seed}{_pruned(args)}"
    if (out / "manifest.json").is_file():
        from nrrstore.format.reader import Store

        labels = Store(out).manifest.labels
        codecs_ok = all(c in (labels.get("codecs") or {}) for c in _codecs(args)) and \
            (labels.get("codecs_prior") or not _codecs(args))
        if labels.get("distances") and codecs_ok:
            return out
    elif _pruned(args) and (out.with_name(out.name[:-len(_pruned(args))]) / "manifest.json").is_file():
        shutil.copytree(out.with_name(out.name[:-len(_pruned(args))]), out)  # the same images, relabelled below
    else:
        cfg = method_config(preset, args.ipc, teacher.image_size, cidd={**cidd, "seed": seed}, nrr=nrr)
        out.parent.mkdir(parents=True, exist_ok=True)  # outputs' parent folders must exist
        _timing(out, "distill", distill(args.train, teacher, out, cfg, overwrite=True).summary)
    epochs = args.label_epochs if _pruned(args) else args.epochs
    _timing(out, "relabel", relabel(out, teacher, epochs, AugRecipe(size=teacher.image_size, seed=seed),
                                    full_softlabels=True, overwrite=True, codecs=["dbr", *_codecs(args)]))
    return out


def _timing(store: Path, step: str, summary: dict[str, Any]) -> None:
    """Keep each step's summary (stage seconds, images) beside the store: the cost table reads them."""
    path = store.with_name(f"{store.name}.timing.json")
    rec = json.loads(path.read_text()) if path.is_file() else {}
    rec[step] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None), dict))}
    rec[step]["threads"] = torch.get_num_threads()
    atomic_write_bytes(path, json.dumps(rec, indent=2, sort_keys=True, default=str).encode())


def run_cell(name: str, seed: int, label: str, args: argparse.Namespace, teacher: Any) -> dict[str, Any]:
    arch = "" if args.student == "convnet3" else f"-{args.student}"  # the default keeps the old cell names
    tag = label.replace(":", "")
    path = args.work / "cells" / f"{name}-ipc{args.ipc}-e{args.epochs}-s{seed}-{tag}{arch}{_pruned(args)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    store = make_store(name, seed, args, teacher)
    student = dict(V[name][3])
    r = train_student(store, args.val, arch=args.student, epochs=args.epochs, labels=label, seed=seed,
                      checkpoint=args.work / "ckpt" / f"{path.stem}.pt", resume=True, cycle=bool(_pruned(args)),
                      checkpoint_every_s=120.0, **student)  # a ResNet-18's checkpoint is 134 MB: not every epoch
    rec = {"variant": name, "seed": seed, "labels": label, "ipc": args.ipc, "epochs": args.epochs,
           "student": args.student, "label_epochs": args.label_epochs or args.epochs,
           "top1": r["top1"], "batch_size": r["batch_size"], "spec": [V[name][0], V[name][1], V[name][2], student],
           "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(rec, indent=2, sort_keys=True).encode())
    (args.work / "ckpt" / f"{path.stem}.pt").unlink(missing_ok=True)
    return rec


def report(args: argparse.Namespace) -> None:
    rows: dict[tuple[str, str], list[float]] = {}
    for f in sorted((args.work / "cells").glob(f"*-ipc{args.ipc}-e{args.epochs}-s*-*.json")):
        rec = json.loads(f.read_text())
        if rec.get("student", "convnet3") != args.student:
            continue
        pruned = rec.get("label_epochs", args.epochs) < args.epochs
        rows.setdefault((rec["variant"], rec["labels"] + (f"/E'{rec['label_epochs']}" if pruned else "")),
                        []).append(rec["top1"] * 100)
    seen = list(dict.fromkeys(lab for _, lab in rows))
    columns = tuple([lab for lab in ("dbr", "onehot", "kd") if lab in seen] + [lab for lab in seen
                                                                             if lab not in ("dbr", "onehot", "kd")])
    names = [n for n in V if any((n, lab) in rows for lab in columns)]
    print(f"IPC {args.ipc}, {args.epochs} epochs of {args.student} students; top-1 % on --val (mean +- std, seeds)")
    print(f"{'variant':22}" + "".join(f"{lab:>22}" for lab in columns))
    for n in names:
        cells = []
        for lab in columns:
            v = rows.get((n, lab), [])
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):6.2f} +- {sd:4.2f} ({len(v)})" if v else "-")
        print(f"{n:22}" + "".join(f"{c:>22}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--train", required=True, help="training part of the real training set (distill input)")
    ap.add_argument("--val", required=True, help="validation part carved from the real training set")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300, help="student epochs (and relabelled epochs)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--student", default="convnet3", help="student architecture (cross-architecture runs)")
    ap.add_argument("--variants", nargs="+", default=list(V), choices=list(V))
    ap.add_argument("--labels", nargs="+", default=["dbr", "onehot"], type=label_mode,
                    help="dbr, onehot, kd, or label codecs (topk:K, dbrc:K; issue 15)")
    ap.add_argument("--codecs", default="", help="label codecs every store must hold (comma-separated), besides "
                    "the cells' own")
    ap.add_argument("--label-epochs", type=int, default=0,
                    help="label pruning: relabel this many epochs (< --epochs) and cycle them (own stores)")
    ap.add_argument("--also-onehot", nargs="*", default=[], choices=list(V), metavar="VARIANT",
                    help="variants that also get one-hot students (besides --labels)")
    ap.add_argument("--part", default="0/1", help="i/n: run every n-th cell starting at i")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "study")
    ap.add_argument("--report", action="store_true", help="print the table of finished cells and exit")
    args = ap.parse_args(argv)
    if args.report:
        report(args)
        return
    torch.set_num_threads(args.threads)
    i, n = (int(x) for x in args.part.split("/"))
    teacher = load_teacher(args.teacher)
    def labels_of(name: str) -> list[str]:
        extra = ["onehot"] if name in args.also_onehot and "onehot" not in args.labels else []
        return [*args.labels, *extra]

    cells = [(name, seed, label) for seed in range(args.seeds) for name in args.variants for label in labels_of(name)
             if not V[name][3] or label != "onehot"]  # student-only variants change nothing for one-hot
    groups: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
    for cell in cells:  # cells sharing a store run in one process, so two never build the same store
        groups.setdefault((store_key(cell[0]), cell[1]), []).append(cell)
    mine = [cell for group in list(groups.values())[i::n] for cell in group]
    t0 = time.perf_counter()
    for k, (name, seed, label) in enumerate(mine):
        rec = run_cell(name, seed, label, args, teacher)
        print(f"[{time.perf_counter() - t0:7.0f} s] {k + 1}/{len(mine)} {name} seed {seed} {label}: "
              f"{rec['top1'] * 100:.2f}%", flush=True)
    shutil.rmtree(args.work / "ckpt", ignore_errors=True) if n == 1 else None


if __name__ == "__main__":
    main()
