"""`teacher train` and `teacher eval`: make and check the teacher that distill and relabel use."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nrrstore_cli._common import ProgressBar, handle_errors, print_json

teacher_app = typer.Typer(help="Train or evaluate a teacher classifier on shards.", no_args_is_help=True)


@teacher_app.command("train")
@handle_errors
def train_cmd(
    inputs: str = typer.Option(..., "--in", help="Training shards (folder, brace pattern, list file, URL)."),
    arch: str = typer.Option("convnet3", "--arch", help="convnet3-6, resnet18, resnet18_cifar, or torchvision:/timm:/module:factory."),
    epochs: int = typer.Option(1, "--epochs", min=1),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (atomically)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw."),
    flip: bool = typer.Option(False, "--flip", help="Random horizontal flips while training."),
    norm: Optional[str] = typer.Option(None, "--norm", help="ConvNet norm: batch, group, instance or none (default group)."),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="ConvNet channels (default 128)."),
    depth: Optional[int] = typer.Option(None, "--depth", min=1, help="ConvNet blocks (default: the arch's, e.g. 3)."),
    val: Optional[str] = typer.Option(None, "--val", help="Held-out shards to report top-1 on."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("cpu", "--device"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Train a teacher on real shards and save it with its classes and normalization."""
    from nrrstore.train.teacher_job import train_teacher

    with ProgressBar(enabled=not json_out) as bar:
        result = train_teacher(inputs, arch, out, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               optimizer=optimizer, seed=seed, flip=flip, val=val, device=device, progress=bar,
                               arch_kwargs={k: v for k, v in (("norm", norm), ("width", width), ("depth", depth))
                                            if v is not None})
    if json_out:
        print_json(result)
    else:
        acc = f", val top-1 {result['val_top1']:.2%}" if "val_top1" in result else ""
        print(f"{out}: {arch} trained {epochs} epoch(s) on {result['train_images']} images{acc}")


@teacher_app.command("eval")
@handle_errors
def eval_cmd(
    teacher: str = typer.Option(..., "--teacher", help="Teacher checkpoint."),
    inputs: str = typer.Option(..., "--in", help="Shards to evaluate on."),
    device: str = typer.Option("cpu", "--device"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Top-1 accuracy of a teacher on labelled shards."""
    from nrrstore.models.checkpoint import load_teacher
    from nrrstore.train.teacher_job import eval_teacher

    result = eval_teacher(load_teacher(teacher, device=device), inputs, device=device)
    if json_out:
        print_json(result)
    else:
        print(f"{teacher}: top-1 {result['top1']:.2%} on {result['images']} images")


def register(app: typer.Typer) -> None:
    app.add_typer(teacher_app, name="teacher")
