"""`teacher train` / `teacher eval` on shards: the squeeze step users need before distilling.

No pretrained weights can be downloaded, so users (and our demo) train their teacher here; the
checkpoint carries architecture, classes and normalization, so `distill` needs nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nrrstore import kept
from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_output_file
from nrrstore.models.checkpoint import Teacher, save_teacher, save_torch_atomic
from nrrstore.models.registry import build_model
from nrrstore.sources.batches import estimate_normalization, first_per_class, shard_batches
from nrrstore.sources.shards import iter_samples, read_class_names
from nrrstore.train.accuracy import evaluate
from nrrstore.train.saved_state import changed_keys, why_unreadable
from nrrstore.train.teacher import OPTIMIZERS, Fit, train_classifier
from nrrstore.train.teacher_crops import check_crop_scale, crops_for_epoch


def _shape_and_classes(spec: Any) -> tuple[int, int, int, list[str]]:
    """(image side, channels, num_classes, class names) from the classes file and the first image."""
    first = next(iter(iter_samples(spec)), None)
    if first is None:
        raise NrrError(str(spec), "no samples")
    h, w = first.image.shape[:2]
    if h != w:
        raise NrrError(first.shard, f"teachers take square images; {first.key!r} is {h}x{w}")
    names = read_class_names(spec)
    if names is None:
        labels = {s.label for s in iter_samples(spec, decode=False)}
        names = [str(i) for i in range(max(labels) + 1)]
    return h, 1 if first.image.ndim == 2 else first.image.shape[2], len(names), names


RESUME_FORMAT = "nrrstore-teacher-resume"


def _save_resume(out: str | os.PathLike[str], state: dict[str, Any], epochs: int) -> None:
    """Keep an epoch's state for ``--resume``, and say so should the run be stopped (`nrrstore.kept`)."""
    save_torch_atomic(state, resume_path(out))
    kept.note(str(resume_path(out)), f"the state after epoch {state['epoch']} of {epochs} in {resume_path(out)} "
                                     "(rerun with --resume)")


def _drop_resume(out: str | os.PathLike[str]) -> None:
    resume_path(out).unlink(missing_ok=True)
    kept.clear(str(resume_path(out)))


def resume_path(out: str | os.PathLike[str]) -> Path:
    """Where an unfinished `train_teacher` keeps its state: ``.<name>.resume`` beside the checkpoint."""
    p = Path(os.path.abspath(out))
    return p.with_name(f".{p.name}.resume")


def train_teacher(spec: Any, arch: str, out: str | os.PathLike[str], *, epochs: int = 1, batch_size: int = 128,
                  lr: float = 0.01, weight_decay: float = 5e-4, optimizer: str = "sgd", seed: int = 0,
                  flip: bool = False, crop_pad: int = 0, val: Any = None, device: str = "cpu", normalization: dict[str, list[float]] | None = None,
                  arch_kwargs: dict[str, Any] | None = None, limit_per_class: int | None = None,
                  overwrite: bool = False,
                  progress: Callable[[str, int, int | None], None] | None = None,
                  recipe: TeacherRecipe | None = None) -> dict[str, Any]:
    """Train ``arch`` on the shards ``spec`` and save a teacher checkpoint at ``out``.

    ``arch_kwargs`` go to the architecture (ConvNet: ``norm``, ``width``, ``depth``) and are recorded in
    the checkpoint, so loading rebuilds the same network. ``limit_per_class`` trains on the first N
    images of each class (shard order): a quick teacher from a large set. An existing ``out`` is
    refused unless ``overwrite``, before any training; ``progress`` counts images, so a progress bar
    shows images/s and the time left. ``flip`` and ``crop_pad`` are the CIFAR recipe's augmentation
    (random horizontal flip; random crop of the image padded by ``crop_pad`` pixels); ``recipe`` adds the
    ImageNet recipe's (random-resized crops, label smoothing), the memory format, fp16 weights, and resuming.

    Every epoch's end leaves its state in `resume_path` (with ``val``, the epoch's validation top-1 is
    recorded too); ``recipe.resume`` continues from it, to the same weights as a run that never stopped.
    """
    recipe = recipe or TeacherRecipe()
    check_output_file(out, overwrite, inputs={"--in": spec, "--val": val}, option="--out")
    with output_lock(out):
        size, channels, num_classes, names = _shape_and_classes(spec)
        if optimizer not in OPTIMIZERS:  # before the passes over the data below
            raise NrrError("--optimizer", f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if crop_pad < 0 or crop_pad >= size:
            raise NrrError("--crop-pad", f"must be between 0 and the image side ({size}) minus 1, got {crop_pad}")
        kwargs = dict(arch_kwargs or {})
        config = {"arch": arch, "arch_kwargs": kwargs, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "optimizer": optimizer, "weight_decay": weight_decay, "seed": seed, "flip": flip,
                  "crop_pad": crop_pad, "limit_per_class": limit_per_class,
                  "crop_scale": list(recipe.crop_scale) if recipe.crop_scale else None,
                  "label_smoothing": recipe.label_smoothing, "crop_size": recipe.crop_size}
        state = _read_resume(out, config, recipe.resume)
        model = build_model(arch, num_classes, channels, size, seed=seed, **kwargs)
        keys = first_per_class(spec, limit_per_class, num_classes) if limit_per_class is not None else None
        norm = (state or {}).get("normalization") or normalization or estimate_normalization(spec, keys=keys)
        n = len(keys) if keys is not None else sum(1 for _ in iter_samples(spec, num_classes=num_classes, decode=False))
        steps = -(-n // batch_size)
        val_history: list[float] = list((state or {}).get("val_top1_per_epoch", []))

        def batches(epoch: int):
            return shard_batches(spec, batch_size, norm["mean"], norm["std"], epoch=epoch, seed=seed, flip=flip,
                                 crop_pad=crop_pad, num_classes=num_classes, keys=keys,
                                 to_float=crops_for_epoch(recipe.crop_scale, seed, epoch, recipe.crop_size)
                                 if recipe.crop_scale else None)

        def validate() -> dict[str, Any]:
            return evaluate(model, shard_batches(val, 500, norm["mean"], norm["std"], shuffle=False,
                                                 num_classes=num_classes), device=device)

        def images_done(step: int, total: int | None) -> None:
            assert progress is not None
            epoch, within = divmod(step, steps)
            progress("teacher train (images)", epoch * n + min(n, within * batch_size), n * epochs)

        def keep(epoch_state: dict[str, Any]) -> None:
            if epoch_state["epoch"] == epochs:  # the checkpoint follows; the previous epoch's state stays till then
                return
            if val is not None:
                val_history.append(validate()["top1"])
            _save_resume(out, {"format": RESUME_FORMAT, "config": config, "normalization": norm,
                               "val_top1_per_epoch": val_history, **epoch_state}, epochs)

        fit = Fit(label_smoothing=recipe.label_smoothing, channels_last=recipe.channels_last, resume=state,
                  on_epoch=keep)
        record = train_classifier(model, batches, epochs=epochs, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                                  device=device, seed=seed, steps_per_epoch=steps,
                                  progress=images_done if progress else None, fit=fit)
        result = _summary(config, record, n, validate() if val is not None else None, val_history)
        save_teacher(out, model.cpu(), {"arch": arch, "arch_kwargs": kwargs, "num_classes": num_classes,
                                        "in_channels": channels, "image_size": size, "classes": names,
                                        "normalization": norm,
                                        "train": {**result, "record": {k: v for k, v in record.items()
                                                                       if k != "history"}}},
                     half=recipe.half)
        _drop_resume(out)
    result["out"] = os.fspath(out)
    return result


@dataclass(frozen=True)
class TeacherRecipe:
    """The ImageNet recipe's parts of `train_teacher` (beyond the CIFAR recipe's flip and crop padding).

    ``crop_scale``: random-resized crops of that area fraction (ImageNet: 0.08-1; 0.35-1 for small sets),
    resized back to the image's side, or to ``crop_size`` (train below the test side: fewer pixels per step,
    and FixRes shows random-resized crops favour testing above the training side). ``label_smoothing``: of the cross-entropy (0.1 is usual).
    ``channels_last``: the memory format (faster on CPUs with oneDNN; the weights saved do not change
    format). ``half``: store fp16 weights (a ResNet-18 in 22 MB instead of 45; they load as fp32).
    ``resume``: continue from the state an interrupted run left (`resume_path`); with none, start.
    """

    crop_scale: tuple[float, float] | None = None
    crop_size: int | None = None
    label_smoothing: float = 0.0
    channels_last: bool = False
    half: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        check_crop_scale(self.crop_scale)
        if self.crop_size is not None and (self.crop_scale is None or self.crop_size < 8):
            raise NrrError("--crop-size", "needs --crop-scale (it sizes the random-resized crops) and at least 8 pixels")
        if not 0 <= self.label_smoothing < 1:
            raise NrrError("--label-smoothing", f"must be in [0, 1), got {self.label_smoothing}")


def _summary(config: dict[str, Any], record: dict[str, Any], n: int, final_val: dict[str, Any] | None,
             val_history: list[float]) -> dict[str, Any]:
    """What `train_teacher` returns and records in the checkpoint: the settings and how the run went."""
    trained = config["epochs"] - record["resumed_at_epoch"]
    result: dict[str, Any] = {**config, "train_images": n,
                              "images_per_second": round(n * trained / max(record["seconds"], 1e-9), 1)}
    if record["resumed_at_epoch"]:
        result["resumed_at_epoch"] = record["resumed_at_epoch"]
    if final_val is not None:
        result.update(val_top1=final_val["top1"], val_images=final_val["n"],
                      val_top1_per_epoch=[*val_history, final_val["top1"]])
    return result


def _read_resume(out: str | os.PathLike[str], config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The state an interrupted run left, checked against this run's settings; None to start afresh."""
    path = resume_path(out)
    if not path.exists():
        return None
    if not resume:
        raise NrrError(path, "an interrupted training run left its state here: pass --resume to continue it, "
                             "or delete the file to start again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (corrupt zip, refused globals...)
        unless_out_of_memory(e)
        raise NrrError(path, f"unreadable resume state ({why_unreadable(path, e)}); delete it to start again") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise NrrError(path, "not a teacher-training resume state; delete it to start again")
    if state.get("config") != config:
        diff = changed_keys(config, state.get("config"))
        raise NrrError(path, f"the interrupted run used other settings ({', '.join(diff)}); rerun with its "
                             "settings, or delete the file to start again")
    return state


def eval_teacher(teacher: Teacher, spec: Any, batch_size: int = 500, device: str = "cpu",
                 progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """Top-1 of ``teacher`` on the shards ``spec`` (class count must match). ``progress`` counts the images
    evaluated (a pass that reads the tars without decoding gives the total first: about 1 s per 50,000 images)."""
    names = read_class_names(spec)
    if names is not None and len(names) != teacher.num_classes:
        raise NrrError(str(spec), f"the data has {len(names)} classes but the teacher has {teacher.num_classes}")
    batches = shard_batches(spec, batch_size, teacher.mean, teacher.std, shuffle=False, num_classes=teacher.num_classes)
    total = sum(1 for _ in iter_samples(spec, num_classes=teacher.num_classes, decode=False)) if progress else None
    ev = evaluate(teacher.model, batches, device=device, progress=progress, task="teacher eval (images)", total=total)
    return {"top1": ev["top1"], "images": ev["n"], "loss": ev.get("loss")}

