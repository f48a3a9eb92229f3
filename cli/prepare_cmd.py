"""`nrrstore prepare ...`: convert IDX files or ImageFolder trees into WebDataset shards."""

from __future__ import annotations

from typing import Any

import typer

from nrrstore.limits import MAX_WORKERS
from nrrstore.sources.prepare import MODES, class_names_from_arg, prepare_idx, prepare_imagefolder
from nrrstore.units import human_bytes
from nrrstore_cli._common import ColourMode, ProgressBar, ShardImageFormat, example, handle_errors, print_json

_OUT = typer.Option(..., "--out", "-o", help="Output folder (created atomically; must not exist or be empty), or an "
                    "s3:// or gs:// URL.")
_SHARD_SIZE = typer.Option(1000, "--shard-size", min=1, help="Samples per shard.")
_PER_CLASS = typer.Option(None, "--per-class", min=1, help="Keep only the first N images of each class (file order).")
_LIMIT = typer.Option(None, "--limit", min=1, help="Keep only the first N images (after --per-class).")
_SKIP = typer.Option(0, "--skip", min=0, help="Skip the first N images (file order) before the others apply; "
                    "with --limit, carves disjoint train/validation splits.")
_SKIP_PER_CLASS = typer.Option(0, "--skip-per-class", min=0, help="Skip the first N images of each class (file "
                              "order); with --per-class, carves disjoint balanced parts, e.g. 0-3999 (--per-class "
                              "4000), 4000-4499 (--skip-per-class 4000 --per-class 500).")
_LAST_PER_CLASS = typer.Option(None, "--last-per-class", min=1, help="Keep only the last N images of each class "
                               "(file order; applied before --skip-per-class and --per-class).")
_DROP_LAST_PER_CLASS = typer.Option(0, "--drop-last-per-class", min=0, help="Drop the last N images of each class "
                                    "first. Held-out parts of equal size from unequal classes: test --last-per-class "
                                    "150; validation --drop-last-per-class 150 --last-per-class 100; train "
                                    "--drop-last-per-class 250.")
_PREFIX = typer.Option(None, "--prefix", help="Shard and key prefix: PREFIX-000000.tar, PREFIX_0000000 (default: "
                       "from the input's name: train-images-idx3-ubyte.gz -> train, t10k-... -> test).")
_RESIZE = typer.Option(None, "--resize", min=1, help="Make every image NxN: shorter side scaled to N, centre cut "
                       "(needed when the images differ in size).")
_GZIP = typer.Option(False, "--gzip", help="Write .tar.gz shards (deterministic gzip).")
_FORMAT = typer.Option("png", "--format", help="Image encoding in the shards: png (lossless), webp (lossless), jpg, "
                      "or source (imagefolder only: each file's own bytes, e.g. JPEGs without a second encode).")
_MODE = typer.Option("keep", "--mode", help=f"Colour mode of the output: {', '.join(MODES)}.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder made by prepare.")
_JSON = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")
_WORKERS = typer.Option(0, "--workers", min=0, max=MAX_WORKERS, help="Worker processes that decode, convert and "
                        "encode the images (0: all in this process); the shards are byte-identical either way.")


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    print(f"wrote {summary['count']} images of {summary['num_classes']} classes in {len(summary['shards'])} "
          f"shards ({human_bytes(summary['bytes'])}) to {summary['out_dir']}")


def idx(
    images: str = typer.Argument(..., help="IDX images file (e.g. train-images-idx3-ubyte.gz).", metavar="IMAGES"),
    labels: str = typer.Argument(..., help="IDX labels file (e.g. train-labels-idx1-ubyte.gz).", metavar="LABELS"),
    out: str = _OUT,
    classes: str | None = typer.Option(
        None, "--classes", help="Class names: a file (one per line, or .json) or a comma-separated list. Default: 0..K-1."),
    shard_size: int = _SHARD_SIZE,
    per_class: int | None = _PER_CLASS,
    limit: int | None = _LIMIT,
    skip: int = _SKIP,
    skip_per_class: int = _SKIP_PER_CLASS,
    last_per_class: int | None = _LAST_PER_CLASS,
    drop_last_per_class: int = _DROP_LAST_PER_CLASS,
    prefix: str | None = _PREFIX,
    gzip: bool = _GZIP,
    image_format: ShardImageFormat = _FORMAT,
    mode: ColourMode = _MODE,
    resize: int | None = _RESIZE,
    overwrite: bool = _OVERWRITE,
    workers: int = _WORKERS,
    as_json: bool = _JSON,
) -> None:
    """Convert an IDX image/label pair (MNIST, Fashion-MNIST) into shards."""
    names = class_names_from_arg(classes) if classes is not None else None
    with ProgressBar() as bar:
        summary = prepare_idx(
            images, labels, out, class_names=names, per_class=per_class, limit=limit, shard_size=shard_size,
            prefix=prefix, gzip=gzip, image_format=image_format, mode=mode, overwrite=overwrite, progress=bar,
            skip=skip, resize=resize, skip_per_class=skip_per_class, workers=workers,
            last_per_class=last_per_class, drop_last_per_class=drop_last_per_class,
        )
    summary["source"] = {"images": str(images), "labels": str(labels)}
    _report(summary, as_json)


def imagefolder(
    root: str = typer.Argument(..., help="Folder with one sub-folder of images per class.", metavar="ROOT"),
    out: str = _OUT,
    shard_size: int = _SHARD_SIZE,
    per_class: int | None = _PER_CLASS,
    limit: int | None = _LIMIT,
    skip: int = _SKIP,
    skip_per_class: int = _SKIP_PER_CLASS,
    last_per_class: int | None = _LAST_PER_CLASS,
    drop_last_per_class: int = _DROP_LAST_PER_CLASS,
    prefix: str = typer.Option("train", "--prefix", help="Shard and key prefix: PREFIX-000000.tar, "
                                         "PREFIX_0000000."),
    gzip: bool = _GZIP,
    image_format: ShardImageFormat = _FORMAT,
    mode: ColourMode = _MODE,
    resize: int | None = _RESIZE,
    overwrite: bool = _OVERWRITE,
    workers: int = _WORKERS,
    as_json: bool = _JSON,
) -> None:
    """Convert an ImageFolder tree (ROOT/<class>/<image>) into shards; classes are the folder names."""
    with ProgressBar() as bar:
        summary = prepare_imagefolder(
            root, out, per_class=per_class, limit=limit, shard_size=shard_size, prefix=prefix, gzip=gzip,
            image_format=image_format, mode=mode, overwrite=overwrite, progress=bar, skip=skip, resize=resize,
            skip_per_class=skip_per_class, workers=workers,
            last_per_class=last_per_class, drop_last_per_class=drop_last_per_class,
        )
    summary["source"] = {"root": str(root)}
    _report(summary, as_json)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Convert raw labelled images into WebDataset shards.", no_args_is_help=True,
                      rich_markup_mode=None)
    sub.command("idx", short_help="IDX files (MNIST...) -> shards.", epilog=example("prepare idx"))(handle_errors(idx))
    sub.command("imagefolder", short_help="Class folders -> shards.", epilog=example("prepare imagefolder"))(handle_errors(imagefolder))
    app.add_typer(sub, name="prepare")
