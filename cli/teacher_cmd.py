"""`teacher train` and `teacher eval`: make and check the teacher that distill and relabel use."""

from __future__ import annotations

import typer

from nrrstore.limits import MAX_EPOCHS
from nrrstore_cli._common import Norm, ProgressBar, TeacherOptimizer, example, handle_errors, parse_pair, print_json

teacher_app = typer.Typer(help="Train or evaluate a teacher classifier on shards.", no_args_is_help=True,
                          rich_markup_mode=None)


@teacher_app.command("train", short_help="Train a teacher on shards.", epilog=example("teacher train"))
@handle_errors
def train_cmd(
    inputs: str = typer.Option(..., "--in", help="Training shards (folder, brace pattern, list file, URL)."),
    arch: str = typer.Option("convnet3", "--arch", help="convnet3..convnet6, resnet18, resnet18_cifar, or a spec "
                             "such as torchvision:NAME, timm:NAME or package.module:factory."),
    epochs: int = typer.Option(1, "--epochs", min=1, max=MAX_EPOCHS, help="Passes over the training images (1-100,000)."),
    out: str = typer.Option(..., "--out", help="Checkpoint file to write (atomically; an existing one needs "
                             "--overwrite)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="Images per optimizer step."),
    lr: float = typer.Option(0.01, "--lr", help="Peak learning rate (5% linear warm-up, then cosine to 0)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="Weight decay."),
    optimizer: TeacherOptimizer = typer.Option("sgd", "--optimizer", help="sgd (momentum 0.9), adam or adamw."),
    flip: bool = typer.Option(False, "--flip", help="Random horizontal flips while training."),
    crop_pad: int = typer.Option(0, "--crop-pad", min=0, help="Random crops of the image padded by N black pixels "
                                 "per side (CIFAR recipe: 4; default 0: none)."),
    norm: Norm | None = typer.Option(None, "--norm", help="ConvNet norm: batch, group, instance or none (default group)."),
    width: int | None = typer.Option(None, "--width", min=1, help="ConvNet channels (default 128)."),
    depth: int | None = typer.Option(None, "--depth", min=1, help="ConvNet blocks (default: the arch's, e.g. 3)."),
    limit_per_class: int | None = typer.Option(None, "--limit-per-class", min=1, help="Train on the first N images "
                                                  "of each class only (a quick teacher from a large set)."),
    crop_scale: str | None = typer.Option(None, "--crop-scale", metavar="LOW,HIGH", help="ImageNet recipe: random-"
                                          "resized crops of this area fraction (e.g. 0.35,1), aspect 3/4-4/3, "
                                          "resized back to the image side."),
    crop_size: int | None = typer.Option(None, "--crop-size", min=8, help="Side of the random-resized crops "
                                         "(default: the image side). Below it: less compute per step; tests stay at "
                                         "the image side."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", min=0.0, max=0.99,
                                          help="Label smoothing of the cross-entropy (0.1 is usual)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (a ResNet-18 "
                                       "at 128 px: 1.27x faster on an AVX2 CPU, benchmarks/train_speed.py)."),
    half: bool = typer.Option(False, "--half", help="Store fp16 weights (half the bytes; they load as fp32)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the state an interrupted run left beside "
                                "--out (saved after every epoch); start afresh if there is none."),
    val: str | None = typer.Option(None, "--val", help="Held-out shards to report top-1 on (after every epoch)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the initialization and the data order."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint file."),
    json_out: bool = typer.Option(False, "--json", help="Print the training summary as JSON on stdout."),
) -> None:
    """Train a teacher on real shards and save it with its classes and normalization.

    --limit-per-class N makes a quick teacher from a large set. On a terminal a progress bar shows
    images/s and the time left."""
    from nrrstore.train.teacher_job import TeacherRecipe, train_teacher

    recipe = TeacherRecipe(crop_scale=parse_pair(crop_scale, "--crop-scale") if crop_scale else None, crop_size=crop_size,
                           label_smoothing=label_smoothing, channels_last=channels_last, half=half, resume=resume)
    with ProgressBar() as bar:
        result = train_teacher(inputs, arch, out, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               optimizer=optimizer, seed=seed, flip=flip, crop_pad=crop_pad, val=val, device=device, progress=bar,
                               arch_kwargs={k: v for k, v in (("norm", norm), ("width", width), ("depth", depth))
                                            if v is not None},
                               limit_per_class=limit_per_class, overwrite=overwrite, recipe=recipe)
    if json_out:
        print_json(result)
    else:
        acc = f", val top-1 {result['val_top1']:.2%}" if "val_top1" in result else ""
        again = f" (resumed after epoch {result['resumed_at_epoch']})" if "resumed_at_epoch" in result else ""
        print(f"{out}: {arch} trained {epochs} epoch(s){again} on {result['train_images']} images "
              f"({result['images_per_second']:.0f} images/s){acc}")


@teacher_app.command("eval", short_help="Top-1 of a teacher on shards.", epilog=example("teacher eval"))
@handle_errors
def eval_cmd(
    teacher: str = typer.Option(..., "--teacher", help="Teacher checkpoint."),
    inputs: str = typer.Option(..., "--in", help="Shards to evaluate on."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1...)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Top-1 accuracy of a teacher on labelled shards."""
    from nrrstore.models.checkpoint import load_teacher
    from nrrstore.train.teacher_job import eval_teacher

    with ProgressBar() as bar:
        result = eval_teacher(load_teacher(teacher, device=device), inputs, device=device, progress=bar)
    if json_out:
        print_json(result)
    else:
        print(f"{teacher}: top-1 {result['top1']:.2%} on {result['images']} images")


def register(app: typer.Typer) -> None:
    app.add_typer(teacher_app, name="teacher")
