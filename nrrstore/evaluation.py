"""`evaluate`: the field's protocol for judging a distilled store, in one resumable job.

Students are trained from scratch for every (image set, label kind, seed) *cell* and tested on real
held-out images; the table reports top-1 mean +- std over seeds. With ``train`` given, the same
protocol runs on a **random-real baseline**: per seed, a seeded random sample of real training images
at the store's IPC (``distill --method random``), relabelled with the store's teacher, augmentation
recipe, epochs and precision. DD-Ranking's metrics (Li et al., 2025) follow from the table:

- IOR (improvement over random) = Acc(syn, L) - Acc(random, L) for each label kind L;
- HLR (hard-label recovery) = Acc(full real data, hard labels) - Acc(syn, one-hot), given ``full_acc``;
- LRS (label-robust score) = 100 * (e^a - e^-1) / (e - e^-1), a = w * IOR - (1 - w) * HLR, w = 0.5,
  with IOR taken on the store's own label kind (dbr, else kd, else one-hot); accuracies are fractions.

Every cell's result is a small JSON file in ``work``, and students checkpoint every epoch there, so a
killed evaluate continues with the unfinished cell at its last epoch; nothing is written into the store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nrrstore import kept
from nrrstore.errors import NrrError, os_errors_name, os_problem
from nrrstore.format import fs
from nrrstore.format.atomic import atomic_write_bytes
from nrrstore.format.codecs import codec_bytes, label_mode
from nrrstore.format.layout import is_store
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_not_inside, check_parent, local_output
from nrrstore.format.reader import Store
from nrrstore.format.shard_cache import ShardCache
from nrrstore.models.checkpoint import Teacher, load_teacher
from nrrstore.progress import Progress
from nrrstore.sources.shards import iter_samples, read_class_names
from nrrstore.train.defaults import STUDENT, resolve_protocol

LABEL_KINDS = ("dbr", "kd", "onehot", "topk:K", "dbrc:K")
LRS_WEIGHT = 0.5
#: Students checkpoint at most this often (and after their last epoch): a killed evaluate loses under a
#: minute of a cell, and hundreds of sub-second epochs do not each pay for a checkpoint write.
CHECKPOINT_EVERY_S = 30.0


@dataclass(frozen=True)
class StudentProtocol:
    """How every student of an evaluation is trained (identical for the store and the baseline).

    ``protocol`` "rded" is RDED's evaluation (`nrrstore.train.defaults.PROTOCOLS`); ``lr``, ``weight_decay``
    and ``kd_temperature`` left as None take the protocol's values."""

    arch: str = "convnet3"
    epochs: int = STUDENT["epochs"]
    batch_size: int | None = None  # None: RDED's rule (see `nrrstore.train.student.default_batch_size`)
    lr: float | None = None
    weight_decay: float | None = None
    alpha_dbr: float = STUDENT["alpha_dbr"]
    dbr_norm: str = STUDENT["dbr_norm"]
    kd_temperature: float | None = None
    codec_fill: str = STUDENT["codec_fill"]
    codec_loss: str = STUDENT["codec_loss"]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    protocol: str = "nrrstore"

    def __post_init__(self) -> None:
        given = {"lr": self.lr, "weight_decay": self.weight_decay, "kd_temperature": self.kd_temperature}
        for key, value in resolve_protocol(self.protocol, **given).items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["protocol"] == "nrrstore":  # the work folders of evaluations made before protocols still resume
            del d["protocol"]
        return d


def available_labels(store: Store) -> list[str]:
    """The label kinds a store can train students with."""
    labels = store.manifest.labels
    kinds = []
    if labels.get("distances"):
        kinds.append("dbr")
    if labels.get("softlabels"):
        kinds.append("kd")
    kinds += [name for name, e in (labels.get("codecs") or {}).items() if e.get("fields")]
    kinds.append("onehot")
    return kinds


def _label_kind(kind: str, num_classes: int) -> str:
    try:
        return label_mode(kind, num_classes)
    except NrrError:
        raise NrrError(None, f"unknown label kind {kind!r}; use {', '.join(LABEL_KINDS)}") from None


def _missing_label_hint(kind: str, store: fs.Location) -> str:
    if ":" in kind:
        return (f"the store has no {kind} labels; add them with `nrrstore relabel {store} --teacher T.pt "
                f"--epochs 300 --labels dbr,{kind} --overwrite`")
    if kind == "dbr":
        return (f"the store has no DBR distances; add them with `nrrstore relabel {store} --teacher T.pt "
                "--epochs 300`")
    return (f"the store has no full soft labels (needed for kd); add them with `nrrstore relabel {store} "
            "--teacher T.pt --epochs 300 --full-softlabels --overwrite`")


def _check_real_set(spec: Any, what: str, store: Store) -> None:
    """Refuse a --train/--val set whose classes or image size differ from the store's."""
    m = store.manifest
    names = read_class_names(spec)
    if names is not None and list(names) != list(m.classes):
        raise NrrError(str(spec), f"{what} classes ({', '.join(names[:3])}, ... {len(names)} in all) differ from "
                                  f"the store's ({', '.join(m.classes[:3])}, ... {len(m.classes)} in all)")
    first = next(iter(iter_samples(spec, num_classes=m.num_classes)), None)
    if first is None:
        raise NrrError(str(spec), f"{what} set has no samples")
    h, w = first.image.shape[:2]
    c = 1 if first.image.ndim == 2 else first.image.shape[2]
    if (h, w, c) != (m.image.height, m.image.width, m.image.channels):
        raise NrrError(first.shard, f"{what} image {first.key!r} is {h}x{w}x{c}, the store's images are "
                                    f"{m.image.height}x{m.image.width}x{m.image.channels}")


def store_ipc(store: Store) -> int:
    """Images per class of a store (all classes must have the same count)."""
    m = store.manifest
    ipc = m.method.get("ipc") if isinstance(m.method, dict) else None
    if isinstance(ipc, int) and ipc * m.num_classes == m.num_images:
        return ipc
    if m.num_images % m.num_classes:
        raise NrrError(store.path, f"{m.num_images} images do not divide into {m.num_classes} equal classes")
    return m.num_images // m.num_classes


def _baseline_teacher(store: Store, teacher: Teacher | str | os.PathLike[str] | None, device: str) -> Teacher:
    rec = store.manifest.teacher or {}
    if not rec.get("sha256"):
        raise NrrError(store.path, "the store has no teacher record, so the random-real baseline cannot be "
                                   "relabelled with the same teacher; relabel the store with `nrrstore relabel` "
                                   "first, or evaluate one-hot labels only (--labels onehot)")
    if teacher is None:
        spec = rec.get("spec")
        if not spec or not Path(str(spec)).is_file():
            raise NrrError(store.path, "the random-real baseline needs the store's teacher: pass --teacher T.pt "
                                       f"(the store was labelled by {rec.get('arch', '?')}, sha256 {rec['sha256'][:12]}...)")
        teacher = str(spec)
    t = teacher if isinstance(teacher, Teacher) else load_teacher(teacher, device)
    if t.sha256 != rec["sha256"]:
        raise NrrError(t.spec, f"this teacher (sha256 {t.sha256[:12]}...) is not the one that labelled the store "
                               f"(sha256 {rec['sha256'][:12]}...); the baseline must use the same teacher")
    return t


def make_baseline(store: Store, train: Any, teacher: Teacher | None, seed: int, labels: Sequence[str], out: Path,
                  device: str, progress: Progress | None = None) -> Path:
    """The random-real store for one seed: same IPC and normalization; relabelled (when the labels need a
    teacher) with the store's teacher, augmentation recipe, epochs and precision."""
    from nrrstore.distill.baseline import random_real_store
    from nrrstore.labels.relabel import relabel
    from nrrstore.replay.recipe import AugRecipe

    m = store.manifest
    needs_teacher = any(k != "onehot" for k in labels)
    if is_store(out):
        have = available_labels(Store(out))
        if not needs_teacher or all(k in have or k == "dbrc:0" for k in labels):
            return out
    else:
        random_real_store(train, out, store_ipc(store), seed, classes=list(m.classes),
                          normalization=m.normalization, progress=progress)
    if needs_teacher:
        assert teacher is not None
        dist = m.labels["distances"] if m.labels.get("distances") else None
        epochs = int(dist["epochs"]) if dist else int(m.labels["softlabels"]["shape"][0])
        assert m.augmentation is not None  # labels are written with the recipe whose views they label
        relabel(out, teacher, epochs, AugRecipe.from_dict(m.augmentation),
                precision=str(dist.get("precision", "fp16")) if dist else "fp16", full_softlabels="kd" in labels,
                codecs=[k for k in labels if ":" in k] or None, overwrite=True, device=device, progress=progress)
    return out


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


def lrs(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
    """DD-Ranking's label-robust score (percent) from IOR and HLR given as fractions."""
    alpha = weight * ior - (1.0 - weight) * hlr
    return 100.0 * (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def metrics(cells: dict[str, dict[str, dict[int, float]]], full_acc: float | None,
            main_label: str) -> dict[str, Any]:
    """IOR per label kind, HLR and LRS (each mean +- std over the seeds present on both sides)."""
    out: dict[str, Any] = {}
    syn, rdm = cells.get("store", {}), cells.get("random", {})
    ior: dict[str, dict[int, float]] = {}
    for kind, by_seed in syn.items():
        common = sorted(set(by_seed) & set(rdm.get(kind, {})))
        if common:
            ior[kind] = {s: by_seed[s] - rdm[kind][s] for s in common}
            out[f"ior_{kind}"] = _mean_std([ior[kind][s] for s in common])
    hlr: dict[int, float] = {}
    if full_acc is not None and "onehot" in syn:
        hlr = {s: full_acc - a for s, a in syn["onehot"].items()}
        out["hlr"] = _mean_std(list(hlr.values()))
        out["full_acc"] = full_acc
    if hlr and main_label in ior:
        common = sorted(set(hlr) & set(ior[main_label]))
        if common:
            out["lrs"] = _mean_std([lrs(ior[main_label][s], hlr[s]) for s in common])
            out["lrs_label"] = main_label
            out["lrs_weight"] = LRS_WEIGHT
    return out


def evaluate_store(
    store: Store | str | os.PathLike[str],
    val: Any,
    work: str | os.PathLike[str],
    *,
    train: Any = None,
    teacher: Teacher | str | os.PathLike[str] | None = None,
    seeds: int = 3,
    labels: Sequence[str] | None = None,
    protocol: StudentProtocol = StudentProtocol(),
    full_acc: float | None = None,
    device: str = "cpu",
    workers: int = 0,
    progress: Progress | None = None,
    cache: ShardCache | None = None,
) -> dict[str, Any]:
    """Train and test every cell (see the module docstring); returns plain data (the `--json` output).

    ``labels`` defaults to every kind the store holds; asking for one it lacks is refused with the
    ``relabel`` option that adds it. ``full_acc`` is the top-1 (fraction) of the same student trained
    on the full real data with hard labels, for HLR and LRS. A run that fails before finishing a
    cell removes the work folder it created; finished cells are kept for a resume. ``cache``: a local cache
    of a remote store's shards (:mod:`nrrstore.format.shard_cache`) that every student of the store reads
    through, so only the first epoch of the first student reads shard bytes remotely.
    """
    t0 = time.perf_counter()
    st = store if isinstance(store, Store) else Store(store)
    if cache is not None:
        st = st.with_cache(cache)
    have = available_labels(st)
    kinds = list(labels) if labels else have
    kinds = [_label_kind(k, st.manifest.num_classes) for k in kinds]
    for kind in kinds:
        if kind not in have and not (kind == "dbrc:0" and "dbr" in have):
            raise NrrError(st.path, _missing_label_hint(kind, st.path))
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NrrError(None, f"seeds must be a positive integer, got {seeds!r}")
    if full_acc is not None and not 0.0 <= full_acc <= 1.0:
        raise NrrError(None, f"full accuracy must be a fraction in [0, 1] (e.g. 0.93), got {full_acc}")
    _check_real_set(val, "held-out (--val)", st)
    base_teacher = None
    if train is not None:
        _check_real_set(train, "training (--train)", st)
        if any(k != "onehot" for k in kinds):
            base_teacher = _baseline_teacher(st, teacher, device)
    work = local_output(work)
    local = st.path.resolve() if isinstance(st.path, Path) else None  # a remote store cannot hold the work folder
    if local is not None and (work.resolve() == local or local in work.resolve().parents):
        raise NrrError(work, "the work folder must lie outside the store (evaluate never writes into a store)")
    check_not_inside(work, {"--val": val, "--train": train}, "--work")
    created = not work.is_dir()
    if created:
        check_parent(work)
    with output_lock(work), os_errors_name(work):
        try:
            return _evaluate_cells(st, val, work, train, base_teacher, seeds, kinds, protocol, full_acc, device,
                                   workers, progress, t0)
        except BaseException as exc:
            done = len(list((work / "cells").glob("*.json")))
            if created and not done:
                shutil.rmtree(work, ignore_errors=True)  # nothing worth a resume
            if isinstance(exc, OSError):
                exc = NrrError(work, os_problem(exc))
            if done and isinstance(exc, NrrError):
                raise NrrError(exc.path, f"{exc.problem}; {done} finished cell(s) are kept in {work}: rerun the "
                                         f"same command to resume, or delete {work} to discard them") from None
            raise


def _evaluate_cells(st: Store, val: Any, work: Path, train: Any, base_teacher: Teacher | None, seeds: int,
                    kinds: list[str], protocol: StudentProtocol, full_acc: float | None, device: str, workers: int,
                    progress: Progress | None, t0: float) -> dict[str, Any]:
    from nrrstore.train.student import default_batch_size, train_student

    (work / "cells").mkdir(parents=True, exist_ok=True)
    (work / "checkpoints").mkdir(exist_ok=True)

    sets = ["store"] + (["random"] if train is not None else [])
    plan = [(images, kind, seed) for images in sets for seed in range(seeds) for kind in kinds]
    proto = {**protocol.to_dict(), "store_files": store_fingerprint(st), "train": None if train is None else str(train),
             "val": str(val)}
    results: dict[str, dict[str, dict[int, float]]] = {}
    best: dict[str, dict[str, dict[int, float]]] = {}  # RDED's reported figure, under its protocol
    records: list[dict[str, Any]] = []
    done_before = 0
    train_seconds = 0.0
    m = st.manifest
    batch = protocol.batch_size or default_batch_size(m.num_images, m.num_classes)
    cell_steps = math.ceil(m.num_images / batch) * protocol.epochs  # the baseline has the store's image count
    for n, (images, kind, seed) in enumerate(plan):
        cell_file = work / "cells" / f"{images}-{kind}-s{seed}.json"
        rec = _load_cell(cell_file, proto, images, kind, seed)
        ckpt = work / "checkpoints" / f"{images}-{kind}-s{seed}.pt"
        if rec is None:
            path = st.path if images == "store" else \
                make_baseline(st, train, base_teacher, seed, kinds, work / f"random-s{seed}", device, progress)
            student_data = st if images == "store" else path  # the Store object keeps its shard cache
            r = train_student(student_data, val, arch=protocol.arch, epochs=protocol.epochs, labels=kind,
                              batch_size=protocol.batch_size, lr=protocol.lr, weight_decay=protocol.weight_decay,
                              alpha_dbr=protocol.alpha_dbr, dbr_norm=protocol.dbr_norm,
                              kd_temperature=protocol.kd_temperature, codec_fill=protocol.codec_fill,
                              codec_loss=protocol.codec_loss, seed=seed,
                              device=device, workers=workers,
                              checkpoint=ckpt, resume=True, checkpoint_every_s=CHECKPOINT_EVERY_S,
                              arch_kwargs=protocol.arch_kwargs, protocol=protocol.protocol,
                              progress=_cell_progress(progress, f"{images} {kind} seed {seed}", n, cell_steps,
                                                      len(plan)) if progress else None)
            rec = {"images": images, "labels": kind, "seed": seed, "top1": r["top1"], "val_loss": r["val_loss"],
                   **({"top1_best_last20": r["top1_best_last20"]} if "top1_best_last20" in r else {}),
                   "val_images": r["val_images"], "store": str(path), "batch_size": r["batch_size"],
                   "seconds": round(sum(h.get("seconds", 0.0) for h in r["history"]), 3), "protocol": proto}
            atomic_write_bytes(cell_file, json.dumps(rec, indent=2, sort_keys=True).encode())
            ckpt.unlink(missing_ok=True)  # the cell's result is kept; its student is not needed any more
            kept.clear(str(ckpt))
            kept.note(str(work), f"{len(list((work / 'cells').glob('*.json')))} finished cell(s) in {work}")
            train_seconds += rec["seconds"]
        else:
            done_before += 1
        records.append(rec)
        results.setdefault(images, {}).setdefault(kind, {})[seed] = rec["top1"]
        if "top1_best_last20" in rec:
            best.setdefault(images, {}).setdefault(kind, {})[seed] = rec["top1_best_last20"]
        if progress:
            progress("evaluate cells", n + 1, len(plan))

    table = {images: {kind: _mean_std([by_seed[s] for s in sorted(by_seed)]) for kind, by_seed in per.items()}
             for images, per in results.items()}
    main = next(k for k in ("dbr", "kd", "onehot") if k in kinds)
    extra = {"table_best_last20": {images: {kind: _mean_std([by_seed[s] for s in sorted(by_seed)])
                                            for kind, by_seed in per.items()} for images, per in best.items()}} \
        if best else {}
    return {
        "label_bytes": label_bytes(st),
        "store": str(st.path), "val": str(val), "train": None if train is None else str(train),
        "ipc": store_ipc(st), "num_classes": m.num_classes, "images": m.num_images,
        "labels": kinds, "seeds": seeds, "protocol": proto, "device": device,
        "table": table, **extra, "metrics": metrics(results, full_acc, main), "cells": records,
        "cells_resumed": done_before, "seconds": round(time.perf_counter() - t0, 3),
    }


def _cell_progress(progress: Progress, task: str, n: int, cell_steps: int, cells: int) -> Progress:
    """A student's steps under its cell's name, and all cells' steps under "evaluate (student steps)": the
    overall bar then moves every step with a rate and the time left (cells before ``n`` count as done)."""

    def report(student_task: str, done: int, total: int | None) -> None:
        if student_task != "train student":  # its test pass counts images, not steps: a bar of its own
            progress(f"{task}: {student_task}", done, total)
            return
        progress(task, done, total)
        progress("evaluate (student steps)", n * cell_steps + done, cells * cell_steps)

    return report

def store_fingerprint(store: Store) -> str:
    """sha256 over the store's listed files (path and sha256): cell results belong to one store's bytes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(store.manifest.files, key=lambda f: f.path):
        h.update(f"{f.path}\x00{f.sha256}\n".encode())
    return h.hexdigest()


def _load_cell(path: Path, proto: dict[str, Any], images: str, kind: str, seed: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged result is recomputed (the student resumes from its checkpoint)
    if rec.get("protocol") != proto or (rec.get("images"), rec.get("labels"), rec.get("seed")) != (images, kind, seed):
        raise NrrError(path, "this work folder holds results for another store, data set or student protocol; "
                             "use a new --work folder or delete it")
    return rec


def label_bytes(store: Store) -> dict[str, Any]:
    """What the store's DBR labels cost on disk against fp16 full soft labels for the same views, and the
    measured bytes per view of every label kind it holds (``codecs``; ``kd`` is the full soft labels)."""
    m = store.manifest
    dist = m.labels.get("distances")
    if not dist:
        return {"distances": 0, "views": 0}
    views = int(dist["epochs"]) * m.num_images
    stored = sum(f.bytes for f in m.files if f.kind == "distances")
    full = views * m.num_classes * 2
    per_codec = {("kd" if k == "full" else k): b / views for k, b in codec_bytes(m).items()}
    if "dbr" in per_codec:
        per_codec["dbrc:0"] = per_codec["dbr"]  # DBR's table read as a distribution: the same bytes
    return {"distances": stored, "views": views, "bytes_per_view": stored / views, "full_fp16": full,
            "ratio": full / stored if stored else None, "codecs": per_codec}


def format_table(result: dict[str, Any]) -> str:
    """A readable table: top-1 mean +- std per image set and label kind, then the metrics."""
    kinds = result["labels"]
    names = {"store": "distilled store", "random": "random real (same IPC)"}
    proto = result["protocol"]
    rows = [(names.get(images, images) + ", last epoch" * ("table_best_last20" in result), per)
            for images, per in result["table"].items()]
    rows += [(f"{names.get(images, images)}, best of last 20%", per)
             for images, per in result.get("table_best_last20", {}).items()]
    width = max([26, *(len(name) + 2 for name, _ in rows)])
    named = f", {proto['protocol']} protocol" if proto.get("protocol") else ""  # RDED's is named; ours is the default
    lines = [(f"students: {proto['arch']}, {proto['epochs']} epochs, {result['seeds']} seed(s){named}; "
              f"top-1 % on {result['val']} (IPC {result['ipc']})"),
             f"{'images':{width}}" + "".join(f"{k:>16}" for k in kinds)]
    for name, per in rows:
        cells = [f"{per[k]['mean'] * 100:6.2f} +- {per[k]['std'] * 100:4.2f}" if k in per else "-" for k in kinds]
        lines.append(f"{name:{width}}" + "".join(f"{c:>16}" for c in cells))
    mt = result["metrics"]
    for kind in kinds:
        if f"ior_{kind}" in mt:
            v = mt[f"ior_{kind}"]
            lines.append(f"gain over random real images, {kind} labels (IOR): {v['mean'] * 100:+.2f} +- "
                         f"{v['std'] * 100:.2f} pt")
    if "hlr" in mt:
        lines.append(f"HLR: {mt['hlr']['mean'] * 100:.2f} +- {mt['hlr']['std'] * 100:.2f} pt below full data "
                     f"({mt['full_acc'] * 100:.2f}%) with hard labels")
    if "lrs" in mt:
        lines.append(f"LRS ({mt['lrs_label']}, w = {mt['lrs_weight']}): {mt['lrs']['mean']:.2f} +- {mt['lrs']['std']:.2f}")
    lb = result.get("label_bytes") or {}
    if lb.get("views"):
        lines.append(f"DBR labels: {lb['distances']:,} bytes for {lb['views']:,} views ({lb['bytes_per_view']:.2f} B/view); "
                     f"fp16 full soft labels: {lb['full_fp16']:,} bytes ({lb['ratio']:.0f}x more)")
        per_view = lb.get("codecs") or {}
        shown = [k for k in kinds if k in per_view]
        if len(shown) > 1:
            lines.append("label bytes per view (measured): " + ", ".join(f"{k} {per_view[k]:.2f}" for k in shown))
    return "\n".join(lines)
