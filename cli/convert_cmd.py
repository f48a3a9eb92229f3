"""`convert-softlabels`, `import rded`, `size-report` and `export`: existing distilled data in and out."""

from __future__ import annotations

import sys

import typer

from nrrstore.errors import NrrError
from nrrstore.format.outputs import local_output
from nrrstore.limits import MAX_EPOCHS, MAX_WORKERS
from nrrstore_cli._common import (
    Amp,
    ColourMode,
    Precision,
    ProgressBar,
    SoftLabelFormat,
    StoreImageFormat,
    check_codecs,
    example,
    handle_errors,
    print_json,
)

_JSON = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output.")
_IPC = typer.Option([10, 50, 200], "--ipc", min=1, help="Images per class of the extrapolation (repeat the option).")


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise NrrError(None, f"{name} must be comma-separated numbers, got {text!r}") from None


def _normalization(mean: str | None, std: str | None, none: bool) -> object:
    if none:
        if mean or std:
            raise NrrError(None, "--no-normalization contradicts --mean/--std")
        return None
    if (mean is None) != (std is None):
        raise NrrError(None, "give both --mean and --std, or neither")
    if mean is None:
        return "auto"
    return {"mean": _floats(mean, "--mean"), "std": _floats(std, "--std")}


def convert_softlabels_cmd(
    labels_dir: str = typer.Argument(..., help="The soft-label folder (SRe2L: epoch_E/batch_B.tar).", metavar="LABELS"),
    images: str = typer.Option(..., "--images", help="The images the labels were made on: an ImageFolder tree, or shards."),
    out: str = typer.Option(..., "--out", help="Output store folder."),
    fmt: SoftLabelFormat = typer.Option("sre2l", "--format", help="Soft-label format (sre2l: SRe2L/FKD relabel output)."),
    sampler_seed: int = typer.Option(42, "--sampler-seed", min=0, help="Seed of the relabel run's RandomSampler generator."),
    order_file: str | None = typer.Option(None, "--order-file", help="Image order per epoch instead of the sampler: .npy [E, N] or text, one line per epoch."),
    temperature: float = typer.Option(1.0, "--temperature", min=1e-6, help="Divide the stored logits by this before computing distances."),
    keep_full: bool = typer.Option(False, "--keep-full", help="Also keep the full soft labels (fp16 zarr, KD baseline)."),
    precision: Precision = typer.Option("fp16", "--precision", help="Distance storage: fp16, fp32 or int8."),
    quant_max: float | None = typer.Option(None, "--quant-max", help="int8 scale in nats (default: from epoch 0)."),
    epochs_per_file: int = typer.Option(100, "--epochs-per-file", min=1, help="Epochs per Parquet file (the resume unit)."),
    size: int | None = typer.Option(None, "--size", min=1, help="Views' output size in pixels (default: the image height)."),
    mode: ColourMode = typer.Option("keep", "--mode", help="Image channels: keep, L or RGB (torchvision's ImageFolder loads RGB)."),
    mean: str | None = typer.Option(None, "--mean", help="Teacher input mean per channel, e.g. 0.485,0.456,0.406 (default: ImageNet's for RGB)."),
    std: str | None = typer.Option(None, "--std", help="Teacher input std per channel (default: ImageNet's for RGB)."),
    no_normalization: bool = typer.Option(False, "--no-normalization", help="The teacher took [0, 1] pixels."),
    classes: str | None = typer.Option(None, "--classes", help="Class names file (one per line, or JSON) instead of the folder names."),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Images per store shard."),
    workers: int | None = typer.Option(None, "--workers", min=0, max=MAX_WORKERS, help="Processes converting epochs in parallel (default: one per CPU up to 4 for large folders; 0: none)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, max=MAX_EPOCHS, help="Convert only the first N epochs (they must be "
                                         "complete): for a label folder still being written."),
    teacher: str | None = typer.Option(None, "--teacher", help="The teacher that made the labels: replay a sample "
                                          "of views and refuse labels that do not describe them (wrong seed, size or "
                                          "images)."),
    replay_sample: int = typer.Option(256, "--replay-sample", min=1, help="Views replayed with --teacher."),
    device: str = typer.Option("cpu", "--device", help="Torch device for --teacher."),
    codecs: str = typer.Option("dbr", "--labels", callback=check_codecs, help="Label codecs to write from the stored "
                               "logits, comma-separated: dbr, full, topk:K, dbrc:K. DBR is always written."),
    overwrite: bool = _OVERWRITE,
    as_json: bool = _JSON,
) -> None:
    """Convert soft-label files (SRe2L/FKD) into an explicit-mode store; rerun to resume a killed job."""
    from nrrstore.convert.sre2l import convert_sre2l

    if fmt != "sre2l":
        raise NrrError("--format", f"unknown soft-label format {fmt!r}; supported: sre2l")
    t = None
    if teacher is not None:
        from nrrstore.models import load_teacher

        t = load_teacher(teacher, device)
    with ProgressBar() as bar:
        summary = convert_sre2l(labels_dir, images, local_output(out), sampler_seed=sampler_seed, order_file=order_file,
                                temperature=temperature, keep_full=keep_full, precision=precision, quant_max=quant_max,
                                epochs_per_file=epochs_per_file, size=size, mode=mode,
                                normalization=_normalization(mean, std, no_normalization), classes=classes,
                                shard_size=shard_size, workers=workers, overwrite=overwrite, progress=bar,
                                epochs=epochs, teacher=t, replay_sample=replay_sample, codecs=codecs)
    if teacher is None:  # nothing tied the labels to these images: say so, on stderr (stdout may be JSON)
        print(f"nrrstore: note: {out}: the labels were not checked against a teacher (a wrong --sampler-seed, --size "
              f"or image folder would go unnoticed); check them with `nrrstore verify {out} --teacher T.pt`",
              file=sys.stderr)
    if as_json:
        print_json(summary)
        return
    print(f"{out}: {summary['images']} images x {summary['epochs']} epochs = {summary['views']} views "
          f"({summary['mix']}), distances {summary['distance_bytes']} bytes ({summary['bytes_per_view']:.2f} B/view); "
          f"source labels {summary['source_bytes']} bytes; {summary['seconds']:.1f} s")
    if summary["chunks_resumed"]:
        print(f"  resumed: {summary['chunks_resumed']} file(s) were already done")
    if summary.get("replay"):
        r = summary["replay"]
        print(f"  replay check: {r['views']} views, mean gap {r['mean_gap']:.3f} nats (largest {r['max_gap']:.3f})")


def import_rded_cmd(
    syn_data: str = typer.Argument(..., help="RDED output: one folder per class number (00000/...), images named "
                                    "class00000_id00000.jpg.", metavar="SYN_DATA"),
    out: str = typer.Option(..., "--out", help="Output store folder."),
    classes: str | None = typer.Option(None, "--classes", help="Class names file (line i = class i) instead of the folder names."),
    image_format: StoreImageFormat | None = typer.Option(None, "--image-format", help="Re-encode as png, webp or jpg (default: "
                                               "keep the source files' bytes when they can be, else png)."),
    quality: int | None = typer.Option(None, "--quality", min=1, max=100, help="Quality for jpg / lossy webp "
                                          "(default: 95 for jpg, lossless webp)."),
    mode: ColourMode = typer.Option("keep", "--mode", help="Image channels: keep (with --teacher: the teacher's), L or RGB. "
                             "RDED writes RGB even for grey data."),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Images per store shard."),
    teacher: str | None = typer.Option(None, "--teacher", "-t", help="Relabel right after import with this teacher checkpoint."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, max=MAX_EPOCHS, help="Epochs to relabel (default 300 with --teacher; at most 100,000)."),
    precision: Precision = typer.Option("fp16", "--precision", help="Distance storage: fp16, fp32 or int8."),
    full_softlabels: bool = typer.Option(False, "--full-softlabels", help="Also store full soft labels (KD baseline)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Augmentation seed for relabelling (default 0)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for relabelling."),
    amp: Amp | None = typer.Option(None, "--amp", help="Relabel under autocast: bf16 or fp16 (default fp32)."),
    overwrite: bool = _OVERWRITE,
    as_json: bool = _JSON,
) -> None:
    """Import RDED synthetic images as a store (RDED stores no labels: relabel with --teacher)."""
    from nrrstore.convert.rded import import_rded

    t = None
    if teacher is not None:
        from nrrstore.devices import amp_dtype
        from nrrstore.models import load_teacher

        amp_dtype(amp, device)
        t = load_teacher(teacher, device)
    elif epochs is not None:
        raise NrrError(None, "--epochs needs --teacher (or run `nrrstore relabel` later)")
    with ProgressBar() as bar:
        summary = import_rded(syn_data, out, classes=classes, image_format=image_format, quality=quality, mode=mode,
                              shard_size=shard_size, overwrite=overwrite, teacher=t, epochs=epochs,
                              relabel_options={"precision": precision, "full_softlabels": full_softlabels,
                                               "seed": seed, "device": device, "amp": amp} if t is not None else None,
                              progress=bar)
    if as_json:
        print_json(summary)
        return
    print(f"{out}: {summary['images']} images in {summary['classes']} classes from {syn_data} "
          f"(mode {summary['image_mode']})")
    if "relabel" in summary:
        r = summary["relabel"]
        print(f"  relabelled {r['views']} views: {r['distance_bytes']} bytes of distances ({r['bytes_per_view']:.2f} B/view)")
    else:
        print("  no labels yet: run `nrrstore relabel STORE --teacher T` (RDED stores none of its own)")


def size_report_cmd(
    store: str = typer.Argument(..., help="The store: a folder or an s3://, gs:// or http(s):// URL.", metavar="STORE"),
    classes: int = typer.Option(1000, "--classes", min=1, help="Classes of the extrapolation (ImageNet-1K: 1000)."),
    ipc: list[int] = _IPC,
    epochs: int = typer.Option(300, "--epochs", min=1, max=MAX_EPOCHS, help="Epochs of the extrapolation (and of a store without labels; 1-100,000)."),
    topk: int = typer.Option(10, "--topk", min=1, help="k of the FKD-style top-k scheme."),
    plot: str | None = typer.Option(None, "--plot", help="Also draw a bar chart (log scale): .png, .pdf or .svg "
                                       "(needs matplotlib: pip install 'nrrstore[plots]')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
    as_json: bool = _JSON,
) -> None:
    """Bytes per component, and what the labels would cost as soft, top-k, DBR or one-hot labels."""
    from nrrstore.convert.size_report import format_report, plot_report, size_report
    from nrrstore.plots import check_chart_output

    if plot is not None:
        check_chart_output(plot, overwrite, inputs={"STORE": store})  # format, matplotlib, the file: before the report
    report = size_report(store, classes=classes, ipc=ipc, epochs=epochs, topk=topk)
    if plot is not None:
        report["plot"] = str(plot_report(report, plot, overwrite=overwrite))
    if as_json:
        print_json(report)
        return
    print(format_report(report))
    if plot is not None:
        print(f"  chart: {plot}")


def export_cmd(
    store: str = typer.Argument(..., help="The store: a folder or an s3://, gs:// or http(s):// URL.", metavar="STORE"),
    to: str = typer.Option("imagefolder", "--to", help="Layout to export to (imagefolder)."),
    out: str = typer.Argument(..., help="Output folder.", metavar="OUT"),
    csv: bool = typer.Option(False, "--csv", help="Also write the distances as distances.csv."),
    numbered: bool = typer.Option(False, "--numbered", help="Prefix class folders with their index so sorted order = class order."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export."),
    as_json: bool = _JSON,
) -> None:
    """Write a store as class folders of images, with distances.parquet joined to keys."""
    from nrrstore.convert.export import FORMATS, export_imagefolder

    if to not in FORMATS:
        raise NrrError("--to", f"unknown export layout {to!r}; supported: {', '.join(FORMATS)}")
    with ProgressBar() as bar:
        summary = export_imagefolder(store, out, csv=csv, numbered=numbered, overwrite=overwrite, progress=bar)
    if as_json:
        print_json(summary)
        return
    print(f"{out}: {summary['images']} images in {summary['classes']} class folders"
          + (f", distances of {summary['epochs']} epochs" if summary["epochs"] else ""))
    if not summary["sorted_folders_match_class_order"]:
        print("  note: sorted folder names differ from the store's class order (ImageFolder numbers classes by "
              "sorted name); use the label column, or --numbered")


def register(app: typer.Typer) -> None:
    app.command("convert-softlabels", short_help="SRe2L/FKD soft-label folder -> store.",
                epilog=example("convert-softlabels"))(handle_errors(convert_softlabels_cmd))
    imp = typer.Typer(help="Import other methods' outputs as stores.", no_args_is_help=True, rich_markup_mode=None)
    imp.command("rded", short_help="RDED synthetic images -> store.", epilog=example("import rded"))(handle_errors(import_rded_cmd))
    app.add_typer(imp, name="import")
    app.command("size-report", short_help="Label bytes vs other label schemes.", epilog=example("size-report"))(handle_errors(size_report_cmd))
    app.command("export", short_help="A store as class folders + distances.", epilog=example("export"))(handle_errors(export_cmd))
