"""Training a student on a store and measuring it on real held-out images.

Recipe (RDED/SRe2L's student protocol, scaled down; the defaults are ours where they say so):
AdamW, lr 1e-3, weight decay 0.01, cosine decay to 0 per step, no warm-up; batch size by RDED's
rule (:func:`default_batch_size`: 10 / 50 / 100 images at IPC 1 / 10 / 50 for 10 classes). The student gets the store's normalization (the teacher's).
Objectives per label mode:
- ``dbr``: ``L_sce + alpha_dbr * L_dbr`` (:func:`~nrrstore.train.losses.dbr_objective`);
- ``kd``: ``KL(teacher || student) * T**2`` on the stored full soft labels, T = ``kd_temperature``
  (default 4, our choice: the stored probabilities are fp16, and at RDED's T = 20 their underflowed
  tail would dominate the tempered target);
- ``onehot``: cross-entropy to the mixed one-hot label (``L_sce`` alone);
- a label codec (``topk:K``, ``dbrc:K``): KD as above on the distribution the codec implies
  (:func:`~nrrstore.train.losses.codec_target`, the unstored mass spread by ``codec_fill``).

Checkpoints are written atomically after every epoch (model, optimizer, history, arguments);
``resume=True`` continues at the next epoch and ends with exactly the weights an uninterrupted run
gets (the data order is a pure function of the store's recipe and the epoch, and nothing else in
the loop is random).
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nrrstore import kept
from nrrstore.devices import resolve_device
from nrrstore.errors import NrrError, NrrWarning, ResumeMismatchError, os_errors_name, unless_out_of_memory
from nrrstore.format.atomic import is_inside, refuse_link, tmp_name
from nrrstore.format.codecs import read_prior
from nrrstore.format.layout import LABEL_FILE_KINDS
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import local_output
from nrrstore.format.reader import Store
from nrrstore.models import build_model
from nrrstore.models.checkpoint import save_torch_atomic
from nrrstore.progress import Progress
from nrrstore.replay.recipe import store_recipe
from nrrstore.sources.shards import iter_samples, read_class_names
from nrrstore.train.accuracy import evaluate
from nrrstore.train.defaults import CODEC_FILLS, CODEC_LOSSES, RDED_PROTOCOL, STUDENT, resolve_protocol
from nrrstore.train.loader import label_mode, make_loader, open_store, to_chw
from nrrstore.train.losses import (
    DBR_NORMS,
    FP16_PROB_FLOOR,
    codec_match_loss,
    codec_target,
    dbr_loss,
    kd_loss,
    sce_loss,
)
from nrrstore.train.saved_state import changed_keys, why_unreadable

CHECKPOINT_FORMAT = "nrrstore-student"
#: A student with fewer than this many optimizer steps per epoch AND fewer than `MIN_TOTAL_STEPS` in all
#: has seen too few updates for its accuracy to say much (a warning says so). RDED's own protocol for
#: 10-class sets runs 1-2 steps per epoch at IPC <= 10 but 300+ steps in all, which is meaningful.
MIN_STEPS_PER_EPOCH = 10
MIN_TOTAL_STEPS = 300


def default_batch_size(num_images: int, num_classes: int = 10) -> int:
    """RDED's student batch size: 10 / 50 / 100 at IPC 1 / 10 / 50, doubled from 100 classes up, never more
    than the store holds. Between RDED's IPCs the next table row applies (IPC 2-10 -> 50, above -> 100)."""
    ipc = max(1, int(num_images) // max(1, int(num_classes)))
    base = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    if num_classes >= 100:
        base *= 2
    return max(1, min(base, int(num_images)))


def few_steps_warning(num_images: int, batch_size: int, epochs: int) -> str | None:
    """The warning for a student whose accuracy says little: fewer than `MIN_STEPS_PER_EPOCH` optimizer
    steps per epoch *and* fewer than `MIN_TOTAL_STEPS` in all (one rank; the last batch may be short)."""
    per_epoch = math.ceil(num_images / batch_size)
    total = per_epoch * epochs
    if per_epoch >= MIN_STEPS_PER_EPOCH or total >= MIN_TOTAL_STEPS:
        return None
    return (f"only {per_epoch} optimizer step(s) per epoch ({num_images} images, batch size {batch_size}; {total} in "
            f"all): with fewer than about {MIN_STEPS_PER_EPOCH} per epoch and {MIN_TOTAL_STEPS} in all the result is "
            "not meaningful; use a smaller batch size or more epochs")


def _checkpoint_locked(train: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Hold the write lock of the ``checkpoint`` file (when there is one) while ``train`` runs.

    A checkpoint's folder is created when missing (resume files live in work folders that callers
    name before they exist), unlike the folders of other outputs.
    """

    @functools.wraps(train)
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        checkpoint = kwargs.get("checkpoint")
        if checkpoint is None:
            return train(*args, **kwargs)
        parent = Path(checkpoint).parent
        made = [p for p in (parent, *parent.parents) if not p.exists()]  # removed again if the run is refused
        with os_errors_name(checkpoint):
            parent.mkdir(parents=True, exist_ok=True)
        try:
            with output_lock(checkpoint):
                return train(*args, **kwargs)
        except BaseException:
            for p in made:  # deepest first; a folder something was written into stays
                try:
                    p.rmdir()
                except OSError:
                    break
            raise

    return run


@_checkpoint_locked
def train_student(
    store: Store | str | os.PathLike[str],
    val_spec: Any,
    arch: str = "convnet3",
    epochs: int = STUDENT["epochs"],
    labels: str = "dbr",
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    alpha_dbr: float = STUDENT["alpha_dbr"],
    dbr_norm: str = STUDENT["dbr_norm"],
    kd_temperature: float | None = None,
    codec_fill: str = STUDENT["codec_fill"], codec_loss: str = STUDENT["codec_loss"],  # label codecs (issue 15)
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 0,
    cycle: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
    eval_every: int = 0,
    eval_batch_size: int = 100,
    progress: Progress | None = None,
    overwrite: bool = False,
    checkpoint_every_s: float = 0.0,
    protocol: str = "nrrstore",
) -> dict[str, Any]:
    """Train ``arch`` from scratch on ``store`` and report top-1 on the real images of ``val_spec``.

    Returns plain data: ``top1``, ``val_loss``, ``val_images``, ``history`` (per epoch: mean loss and its parts,
    lr at the epoch's end, seconds, and top-1 when ``eval_every`` divides the epoch number), ``steps``, and the
    arguments; ``model`` too. An existing ``checkpoint`` is continued with ``resume``, replaced with ``overwrite``,
    else refused. It is written after every epoch, or with ``checkpoint_every_s > 0`` after the first epoch that
    ends that long after the last write (and after the last): small students run hundreds of sub-second epochs.
    Fewer than `MIN_STEPS_PER_EPOCH` steps per epoch, `MIN_TOTAL_STEPS` in all warn. The held-out pass reports
    every ``eval_batch_size`` images. ``protocol``: see `_protocol_values`.
    """
    lr, weight_decay, kd_temperature = _protocol_values(protocol, lr, weight_decay, kd_temperature)
    st = open_store(store)
    m = st.manifest
    labels = label_mode(labels, m.num_classes)
    _check_args(dbr_norm, epochs, lr, weight_decay, alpha_dbr, kd_temperature)
    arch_kwargs = _protocol_arch_kwargs(protocol, arch, labels, arch_kwargs)
    batch_size = int(batch_size) if batch_size else default_batch_size(m.num_images, m.num_classes)
    recipe = store_recipe(m, st.manifest_path)
    _check_val(val_spec, st)
    args = {  # what a checkpoint must have been made with to be resumed
        "store_index_sha256": m.index_sha256, "labels_files": sorted(f.sha256 for f in m.files
                                                                     if f.kind in LABEL_FILE_KINDS),
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "epochs": epochs, "labels": labels,
        "batch_size": batch_size, "lr": float(lr), "weight_decay": float(weight_decay), "alpha_dbr": float(alpha_dbr),
        "dbr_norm": dbr_norm, "kd_temperature": float(kd_temperature), "seed": int(seed), "cycle": bool(cycle),
        **_codec_args(labels, codec_fill, codec_loss), **({"protocol": protocol} if protocol != "nrrstore" else {})}
    dev = resolve_device(device)
    model = build_model(arch, m.num_classes, m.image.channels, recipe.size, seed=seed, **(arch_kwargs or {})).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ckpt = _checkpoint_path(checkpoint, st)
    start_epoch, history = _resume(ckpt, resume, overwrite, args, model, opt)
    loader = make_loader(st, start_epoch, batch_size, labels, workers=workers, device=dev, cycle=cycle,
                         num_epochs=epochs - start_epoch) if start_epoch < epochs else None
    few = few_steps_warning(m.num_images, batch_size, epochs)  # given once the first batch has been read
    run = _Run(model=model, opt=opt, args=args, dev=dev, history=history, ckpt=ckpt,
               checkpoint_every_s=checkpoint_every_s, steps_per_epoch=math.ceil(m.num_images / batch_size),
               progress=progress, evaluate_now=lambda: evaluate(model, val_batches(val_spec, st, eval_batch_size),
                                                                dev)["top1"],
               eval_every=eval_every, prior=_prior(st, args, dev))
    model.train()
    for k, batch in enumerate(loader if loader is not None else ()):
        if few and k == 0:  # after every refusing check, the first data read included
            warnings.warn(few, NrrWarning, stacklevel=3)
        run.step(batch)
    result = evaluate(model, val_batches(val_spec, st, eval_batch_size), dev, progress, "test on --val (images)")
    if history:
        history[-1]["top1"] = result["top1"]
    return {
        **_protocol_result(protocol, history, epochs), "top1": result["top1"], "val_loss": result["loss"], "val_images": result["n"], "history": history,
        "steps": run.total_steps, "resumed_at_epoch": start_epoch, "store": str(st.path), **args, "model": model,
    }


def _protocol_values(protocol: str, lr: float | None, weight_decay: float | None,
                     kd_temperature: float | None) -> tuple[float, float, float]:
    """``protocol`` "rded" trains and reports as RDED's evaluation does (`nrrstore.train.defaults.PROTOCOLS`):
    its ConvNets get BatchNorm unless ``arch_kwargs`` names a norm, and the result adds ``top1_best_last20``.
    Returns the learning rate, weight decay and KD temperature: those given, else the protocol's."""
    v = resolve_protocol(protocol, lr=lr, weight_decay=weight_decay, kd_temperature=kd_temperature)
    return v["lr"], v["weight_decay"], v["kd_temperature"]


def _protocol_result(protocol: str, history: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """The protocol's name, and under RDED's its reported figure: the best of its tests in the last 20%."""
    if protocol != "rded":
        return {"protocol": protocol}
    tested = [h["top1"] for h in history if "top1" in h and _rded_eval_epoch(int(h["epoch"]), epochs)]
    return {"protocol": protocol, "top1_best_last20": max(tested)}


def _protocol_arch_kwargs(protocol: str, arch: str, labels: str,
                          arch_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """RDED's students learn from full soft labels, and its ConvNets use BatchNorm (``net_norm="batch"``)."""
    kw = dict(arch_kwargs or {})
    if protocol != "rded":
        return kw
    if labels != "kd":
        raise NrrError(None, f"the rded protocol trains on full soft labels: use labels kd, not {labels} (add them "
                             "with `nrrstore relabel STORE --teacher T.pt --full-softlabels --overwrite`)")
    if arch.startswith("convnet") and "norm" not in kw:
        kw["norm"] = RDED_PROTOCOL["convnet_norm"]
    return kw


def _rded_eval_epoch(epoch: int, epochs: int) -> bool:
    """RDED tests every 10th epoch and the last, and keeps only those after 80% of training. The last epoch
    always counts here (RDED's code would report 0 for a run of 5 epochs or fewer)."""
    every, after = RDED_PROTOCOL["eval_every"], RDED_PROTOCOL["eval_after"]
    return epoch == epochs - 1 or (epoch % every == every - 1 and epoch > epochs * after)


def lr_factor(protocol: str, epoch: int, global_step: int, total_steps: int, epochs: int) -> float:
    """The learning rate's multiplier: a per-step cosine to 0 (nrrstore), or RDED's per-epoch cosine over twice
    the epochs, which ends at half the base rate."""
    if protocol == "rded":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2.0))
    return 0.5 * (1.0 + math.cos(math.pi * global_step / total_steps))


def _codec_args(labels: str, codec_fill: str, codec_loss: str) -> dict[str, Any]:
    """What a codec student's checkpoint records besides the rest (only codec students: older checkpoints of
    the other modes still resume)."""
    if ":" not in labels:
        return {}
    if codec_fill not in CODEC_FILLS:
        raise NrrError(None, f"unknown codec fill {codec_fill!r}; use one of {', '.join(CODEC_FILLS)}")
    if codec_loss not in CODEC_LOSSES:
        raise NrrError(None, f"unknown codec loss {codec_loss!r}; use one of {', '.join(CODEC_LOSSES)}")
    if codec_loss == "kd" or labels == "dbrc:0":  # dbrc:0 under "match" would be DBR itself: it is read as KD
        return {"codec_fill": codec_fill}
    return {"codec_fill": codec_fill, "codec_loss": codec_loss}


def _prior(st: Store, args: dict[str, Any], dev: torch.device) -> torch.Tensor | None:
    """The store's class prior for a codec student with ``codec_fill="prior"`` (None: spread evenly; also for
    stores relabelled before the prior existed)."""
    section = st.manifest.labels.get("codecs_prior")
    if args.get("codec_fill") != "prior" or not section:
        return None
    return torch.from_numpy(read_prior(st.path, section, st.manifest.num_classes)).to(dev)


def _check_args(dbr_norm: str, epochs: Any, lr: float, weight_decay: float, alpha_dbr: float,
                kd_temperature: float) -> None:
    if dbr_norm not in DBR_NORMS:
        raise NrrError(None, f"unknown DBR norm {dbr_norm!r}; use one of {', '.join(DBR_NORMS)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise NrrError(None, f"epochs must be a positive integer, got {epochs!r}")
    if not (lr > 0 and weight_decay >= 0 and alpha_dbr >= 0 and kd_temperature > 0):
        raise NrrError(None, "need lr > 0, weight_decay >= 0, alpha_dbr >= 0 and kd_temperature > 0")


def _checkpoint_path(checkpoint: str | os.PathLike[str] | None, st: Store) -> Path | None:
    """The local checkpoint path, refused before any work when it lies inside the store (which would no longer
    verify) or when a link stands where its temporary file goes."""
    if checkpoint is None:
        return None
    ckpt = local_output(checkpoint)
    refuse_link(tmp_name(ckpt))
    if isinstance(st.path, Path) and is_inside(ckpt, st.path):
        raise NrrError(ckpt, f"the checkpoint may not lie inside the store {st.path} (it would no longer verify)")
    return ckpt


def _resume(ckpt: Path | None, resume: bool, overwrite: bool, args: dict[str, Any], model: nn.Module,
            opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]]:
    """``(first epoch to train, history so far)``: a checkpoint is continued, refused, or started afresh."""
    if resume and ckpt is None:
        raise NrrError(None, "resume needs a checkpoint path (--checkpoint)")
    if ckpt is not None and ckpt.is_dir():
        raise NrrError(ckpt, "is a folder; --checkpoint names the checkpoint file")
    if ckpt is not None and not resume and ckpt.exists() and not overwrite:
        raise NrrError(ckpt, "already exists (use --resume to continue from it, or --overwrite to replace it)")
    if ckpt is not None and resume and ckpt.is_file():
        return _load_checkpoint(ckpt, args, model, opt)
    return 0, []


@dataclass
class _Run:
    """The epoch loop's state: one optimizer step per batch, bookkeeping at each epoch's end."""

    model: nn.Module
    opt: torch.optim.Optimizer
    args: dict[str, Any]
    dev: torch.device
    history: list[dict[str, Any]]
    ckpt: Path | None
    checkpoint_every_s: float
    steps_per_epoch: int  # one rank, the last batch may be short
    progress: Progress | None
    evaluate_now: Callable[[], float]
    eval_every: int
    prior: torch.Tensor | None = None  # the class prior of codec targets (codec_fill "prior")
    sums: dict[str, Any] = field(default_factory=dict)
    seen: int = 0
    t_epoch: float = field(default_factory=time.perf_counter)
    last_save: float = field(default_factory=time.perf_counter)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * int(self.args["epochs"])

    def step(self, batch: dict[str, Any]) -> None:
        a = self.args
        epoch, step = batch["epoch"], batch["step"]
        global_step = epoch * self.steps_per_epoch + step
        rate = a["lr"] * lr_factor(a.get("protocol", "nrrstore"), epoch, global_step, self.total_steps,
                                   int(a["epochs"]))
        for group in self.opt.param_groups:
            group["lr"] = rate
        parts = _loss(self.model, batch, a, self.dev, self.prior)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.opt.step()
        n = int(batch["y"].numel())
        for k, v in parts.items():  # summed on the device: one sync per epoch, not per step
            self.sums[k] = self.sums.get(k, 0.0) + v.detach() * n
        self.seen += n
        if self.progress is not None:
            self.progress("train student", global_step + 1, self.total_steps)
        if step == self.steps_per_epoch - 1:
            self.end_epoch(epoch, rate)

    def end_epoch(self, epoch: int, rate: float) -> None:
        record = {k: float(v) / self.seen for k, v in self.sums.items()}
        if not math.isfinite(record["loss"]):
            raise NrrError(None, f"student training diverged in epoch {epoch} (loss {record['loss']}); "
                                 "lower the learning rate")
        record.update(epoch=epoch, lr=rate, seconds=round(time.perf_counter() - self.t_epoch, 3))
        epochs = int(self.args["epochs"])
        rded = self.args.get("protocol") == "rded" and _rded_eval_epoch(epoch, epochs)
        if (rded or self.eval_every and (epoch + 1) % self.eval_every == 0) and epoch + 1 < epochs:
            record["top1"] = self.evaluate_now()
        self.history.append(record)
        now = time.perf_counter()
        if self.ckpt is not None and (self.checkpoint_every_s <= 0 or now - self.last_save >= self.checkpoint_every_s
                                      or epoch + 1 == epochs):
            _save_checkpoint(self.ckpt, self.args, self.model, self.opt, epoch + 1, self.history)
            kept.note(str(self.ckpt), f"the student checkpoint {self.ckpt} after epoch {epoch + 1} of {epochs}")
            self.last_save = now
        self.sums, self.seen, self.t_epoch = {}, 0, time.perf_counter()


def _loss(model: nn.Module, batch: dict[str, Any], a: dict[str, Any], dev: torch.device,
          prior: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    labels, alpha_dbr, norm, T = a["labels"], a["alpha_dbr"], a["dbr_norm"], a["kd_temperature"]
    x = batch["images"].to(dev, non_blocking=True)
    y, y2, lam = (batch[k].to(dev) for k in ("y", "y_partner", "lam"))
    logits = model(x)
    if labels == "kd":
        kd = kd_loss(logits, batch["soft"].to(dev), T=T, from_logits=False, t_squared=a.get("protocol") != "rded",
                     prob_floor=FP16_PROB_FLOOR)  # stored soft labels are fp16
        return {"loss": kd, "kd": kd}
    if ":" in labels:  # a label codec: KD on the distribution it implies (nrrstore.train.losses.codec_target)
        kind = labels.split(":")[0]
        ids = batch.get("codec_ids", torch.zeros((len(y), 0), dtype=torch.long))
        values = batch.get("codec_values", torch.zeros((len(y), 0)))
        d_org, d_aug = batch.get("d_org"), batch.get("d_aug")
        if a.get("codec_loss") == "match":
            sce = sce_loss(logits, y, y2, lam)
            match = codec_match_loss(logits, kind, ids.to(dev), values.to(dev), y, y2, lam,
                                     None if d_org is None else d_org.to(dev), None if d_aug is None else d_aug.to(dev),
                                     norm)
            return {"loss": sce + alpha_dbr * match, "sce": sce, "dbr": match}
        target = codec_target(kind, logits.shape[1], ids.to(dev), values.to(dev), y, y2, lam,
                              None if d_org is None else d_org.to(dev), None if d_aug is None else d_aug.to(dev),
                              prior)
        kd = kd_loss(logits, target, T=T, from_logits=False, prob_floor=FP16_PROB_FLOOR)  # fp16-stored values
        return {"loss": kd, "kd": kd}
    sce = sce_loss(logits, y, y2, lam)
    if labels == "onehot" or alpha_dbr == 0:
        return {"loss": sce, "sce": sce}
    dbr = dbr_loss(logits, y, y2, lam, batch["d_org"].to(dev), batch["d_aug"].to(dev), norm=norm)
    return {"loss": sce + alpha_dbr * dbr, "sce": sce, "dbr": dbr}


# -- evaluation ---------------------------------------------------------------------------------------
def _check_val(val_spec: Any, st: Store) -> None:
    """Refuse held-out data the student could not be tested on, before the first epoch (not after hours):
    other class names, no samples, or images of another channel count (the first sample is decoded)."""
    m = st.manifest
    names = read_class_names(val_spec)
    if names is not None and names != m.classes:
        raise NrrError(str(val_spec), f"held-out (--val) classes ({', '.join(names[:4])}...) differ from the store's "
                             f"({', '.join(m.classes[:4])}...); labels would not match")
    first = next(iter(val_batches(val_spec, st, batch_size=1)), None)
    if first is None:
        raise NrrError(str(val_spec), "no held-out samples to test the student on")


def val_batches(val_spec: Any, store: Store, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Real held-out images as the student sees them: [0,1], resized to the view size, normalized."""
    m = store.manifest
    size = store_recipe(m).size
    norm = m.normalization
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1) if norm else None
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1) if norm else None
    xs: list[torch.Tensor] = []
    ys: list[int] = []

    def flush() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack(xs).float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if mean is not None and std is not None:  # both or neither
            x = (x - mean) / std
        out = (x, torch.tensor(ys, dtype=torch.int64))
        xs.clear()
        ys.clear()
        return out

    for s in iter_samples(val_spec, num_classes=m.num_classes):
        t = to_chw(s.image)
        if t.shape[0] != m.image.channels:
            raise NrrError(s.shard, f"held-out image {s.key!r} has {t.shape[0]} channel(s), the store {m.image.channels}")
        xs.append(t)
        ys.append(s.label)
        if len(xs) == batch_size:
            yield flush()
    if xs:
        yield flush()


# -- checkpoints --------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, args: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
                     epochs_done: int, history: list[dict[str, Any]]) -> None:
    record = {"format": CHECKPOINT_FORMAT, "version": 1, "args": args, "epochs_done": epochs_done,
              "history": history, "model": model.state_dict(), "optimizer": opt.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(record, path)


def _load_checkpoint(path: Path, args: dict[str, Any], model: nn.Module,
                     opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]]:
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (corrupt zip, refused globals...)
        unless_out_of_memory(exc)
        raise NrrError(path, f"not a readable student checkpoint ({why_unreadable(path, exc)}); --overwrite "
                             "starts the student afresh (or delete the file)") from None
    if not isinstance(rec, dict) or rec.get("format") != CHECKPOINT_FORMAT:
        raise NrrError(path, "not an nrrstore student checkpoint")
    if rec.get("args") != args:
        diff = changed_keys(args, rec.get("args"))
        raise ResumeMismatchError(path, f"checkpoint was made with other arguments or labels ({', '.join(diff)} "
                                        "differ); use the same ones, or another checkpoint path")
    model.load_state_dict(rec["model"])
    opt.load_state_dict(rec["optimizer"])
    return int(rec["epochs_done"]), list(rec["history"])


def summary_without_model(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the model object (for JSON output)."""
    return {k: v for k, v in result.items() if k != "model"}

