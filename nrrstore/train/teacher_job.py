"""`teacher train` / `teacher eval` on shards: the squeeze step users need before distilling.

No pretrained weights can be downloaded, so users (and our demo) train their teacher here; the
checkpoint carries architecture, classes and normalization, so `distill` needs nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nrrstore.errors import NrrError
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_output_file
from nrrstore.models.checkpoint import Teacher, save_teacher
from nrrstore.models.registry import build_model
from nrrstore.sources.batches import estimate_normalization, first_per_class, shard_batches
from nrrstore.sources.shards import iter_samples, read_class_names
from nrrstore.train.accuracy import evaluate
from nrrstore.train.teacher import OPTIMIZERS, train_classifier


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


def train_teacher(spec: Any, arch: str, out: str | os.PathLike[str], *, epochs: int = 1, batch_size: int = 128,
                  lr: float = 0.01, weight_decay: float = 5e-4, optimizer: str = "sgd", seed: int = 0,
                  flip: bool = False, crop_pad: int = 0, val: Any = None, device: str = "cpu", normalization: dict[str, list[float]] | None = None,
                  arch_kwargs: dict[str, Any] | None = None, limit_per_class: int | None = None,
                  overwrite: bool = False,
                  progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """Train ``arch`` on the shards ``spec`` and save a teacher checkpoint at ``out``.

    ``arch_kwargs`` go to the architecture (ConvNet: ``norm``, ``width``, ``depth``) and are recorded in
    the checkpoint, so loading rebuilds the same network. ``limit_per_class`` trains on the first N
    images of each class (shard order): a quick teacher from a large set. An existing ``out`` is
    refused unless ``overwrite``, before any training; ``progress`` counts images, so a progress bar
    shows images/s and the time left. ``flip`` and ``crop_pad`` are the CIFAR recipe's augmentation
    (random horizontal flip; random crop of the image padded by ``crop_pad`` pixels).
    """
    check_output_file(out, overwrite, inputs=[spec, val])
    with output_lock(out):
        size, channels, num_classes, names = _shape_and_classes(spec)
        if optimizer not in OPTIMIZERS:  # before the passes over the data below
            raise NrrError("--optimizer", f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if crop_pad < 0 or crop_pad >= size:
            raise NrrError("--crop-pad", f"must be between 0 and the image side ({size}) minus 1, got {crop_pad}")
        kwargs = dict(arch_kwargs or {})
        model = build_model(arch, num_classes, channels, size, seed=seed, **kwargs)
        keys = first_per_class(spec, limit_per_class, num_classes) if limit_per_class is not None else None
        norm = normalization or estimate_normalization(spec, keys=keys)
        n = len(keys) if keys is not None else sum(1 for _ in iter_samples(spec, num_classes=num_classes, decode=False))
        steps = -(-n // batch_size)

        def batches(epoch: int):
            return shard_batches(spec, batch_size, norm["mean"], norm["std"], epoch=epoch, seed=seed, flip=flip,
                                 crop_pad=crop_pad, num_classes=num_classes, keys=keys)

        def images_done(step: int, total: int | None) -> None:
            assert progress is not None
            epoch, within = divmod(step, steps)
            progress("teacher train (images)", epoch * n + min(n, within * batch_size), n * epochs)

        record = train_classifier(model, batches, epochs=epochs, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                                  device=device, seed=seed, steps_per_epoch=steps,
                                  progress=images_done if progress else None)
        result: dict[str, Any] = {"arch": arch, "arch_kwargs": kwargs, "epochs": epochs, "train_images": n,
                                  "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                                  "weight_decay": weight_decay, "seed": seed, "flip": flip, "crop_pad": crop_pad,
                                  "limit_per_class": limit_per_class,
                                  "images_per_second": round(n * epochs / max(record["seconds"], 1e-9), 1)}
        if val is not None:
            ev = evaluate(model, shard_batches(val, 500, norm["mean"], norm["std"], shuffle=False,
                                               num_classes=num_classes), device=device)
            result["val_top1"] = ev["top1"]
            result["val_images"] = ev["n"]
        save_teacher(out, model.cpu(), {"arch": arch, "arch_kwargs": kwargs, "num_classes": num_classes,
                                        "in_channels": channels, "image_size": size, "classes": names,
                                        "normalization": norm,
                                        "train": {**result, "record": {k: v for k, v in record.items()
                                                                       if k != "history"}}})
    result["out"] = os.fspath(out)
    return result


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

