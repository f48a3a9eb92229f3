"""`distill`: real shards -> a distilled store (CIDD + NRR, then DBR relabeling)."""

from __future__ import annotations

from pathlib import Path

import typer

from nrrstore.distill.presets import NRR_CIDD, NRR_REFINE, default_text
from nrrstore.errors import LabelsExistError, NrrError
from nrrstore.limits import MAX_EPOCHS, MAX_ITERATIONS
from nrrstore_cli._common import (
    Amp,
    CamScore,
    Method,
    NrrOptimizer,
    PerImage,
    Precision,
    ProgressBar,
    Select,
    Sources,
    StoreImageFormat,
    above_zero,
    example,
    handle_errors,
    print_json,
)

# Every default in the help comes from the presets (nrrstore.distill.presets), the library's single source.
DEFAULTS = {key: default_text(key) for key in (*NRR_CIDD, *NRR_REFINE)}

@handle_errors
def distill_cmd(
    inputs: str = typer.Option(..., "--in", help="Input WebDataset shards: folder, brace pattern, list file or URL."),
    ipc: int = typer.Option(..., "--ipc", min=1, help="Synthetic images per class."),
    teacher: str = typer.Option(..., "--teacher", help="Teacher checkpoint (nrrstore teacher train), or an architecture "
                                "spec such as torchvision:NAME or timm:NAME."),
    out: str = typer.Option(..., "--out", help="Output store: a folder, or an s3:// or gs:// URL (uploaded, "
                            "manifest last)."),
    method: Method = typer.Option("nrr", "--method", help="nrr (NRR-DD), rded (high confidence, no refinement) or random (random real images)."),
    factor: int | None = typer.Option(None, "--factor", min=1, help="Patches per side (beta = factor^2). Default: 2 at >= 128 px, else 1."),
    mipc: int | None = typer.Option(None, "--mipc", min=1, help="Real images considered per class (default: nrr ceil(1.5*ipc*factor^2/cam-top), 30 at IPC 10; rded 300)."),
    num_crop: int | None = typer.Option(None, "--num-crop", min=1, help=f"Candidate crops per real image ({DEFAULTS['num_crop']})."),
    select: Select | None = typer.Option(None, "--select", help=f"low (NRR-DD), high (RDED) or random ({DEFAULTS['select']})."),
    per_image: PerImage | None = typer.Option(None, "--per-image", help=f"Crop kept per real image: cam (highest CAM ratio) or score (lowest CE) ({DEFAULTS['per_image']})."),
    min_scale: float | None = typer.Option(None, "--min-scale", min=0.01, max=1.0, help=f"Smallest candidate crop, as a share of the image's area ({DEFAULTS['scale']})."),
    cam_top: float | None = typer.Option(None, "--cam-top", max=1.0, callback=above_zero, help=f"Fraction t of candidates kept by CAM ratio before selection ({DEFAULTS['cam_top']})."),
    cam_score: CamScore | None = typer.Option(None, "--cam-score", help=f"CAM criterion of a crop: share (of the image's CAM), density (share / area share) or excess (share - area share) ({DEFAULTS['cam_score']})."),
    correct_only: bool | None = typer.Option(None, "--correct-only/--any-prediction", help=f"Select only among candidates the teacher classifies correctly ({DEFAULTS['correct_only']})."),
    sources: Sources | None = typer.Option(None, "--sources", help=f"Which mipc real images per class: random (seeded sample) or first (shard order) ({DEFAULTS['sources']})."),
    eps: float | None = typer.Option(None, "--eps", min=0.0, help=f"NRR CAM threshold: mask = max(0, eps - CAM) ({DEFAULTS['eps']})."),
    lr: float | None = typer.Option(None, "--lr", callback=above_zero, help=f"NRR step size ({DEFAULTS['lr']} with adam)."),
    iterations: int | None = typer.Option(None, "--iterations", min=0, max=MAX_ITERATIONS, help=f"NRR steps, at most 1,000,000 ({DEFAULTS['iterations']})."),
    alpha_bn: float | None = typer.Option(None, "--alpha-bn", min=0.0, help=f"Weight of the BN-statistics loss ({DEFAULTS['alpha_bn']}; rded and random do not refine)."),
    optimizer: NrrOptimizer | None = typer.Option(None, "--optimizer", help=f"adam (mask on the update) or sgd (plain masked gradient descent) ({DEFAULTS['optimizer']})."),
    no_refine: bool = typer.Option(False, "--no-refine", help="Skip NRR (RDED-style images)."),
    image_format: StoreImageFormat | None = typer.Option(None, "--image-format", help="png (lossless), webp or jpg (default: jpg "
                                               "quality 90 at >= 128 px, else png)."),
    quality: int | None = typer.Option(None, "--quality", min=1, max=100, help="Quality for jpg (default 90 at >= 128 "
                                          "px, 95 if jpg is asked below) / lossy webp."),
    save_cams: bool = typer.Option(False, "--save-cams", help="Also store each image's CAM (cams.zarr) for inspect --grid."),
    relabel_epochs: int = typer.Option(300, "--relabel-epochs", min=0, max=MAX_EPOCHS, help="Then compute DBR distances for this many student epochs (0: skip; at most 100,000)."),
    precision: Precision = typer.Option("fp16", "--precision", help="DBR distance precision: fp16, fp32 or int8."),
    full_softlabels: bool = typer.Option(False, "--full-softlabels", help="Also store full soft labels (zarr) for the KD baseline."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every random draw (crops, selection, augmentation)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Teacher batch size for scoring."),
    nrr_batch_size: int = typer.Option(100, "--nrr-batch-size", min=1, help="Images refined together (BN statistics are per batch)."),
    classes_per_pass: int = typer.Option(100, "--classes-per-pass", min=1, help="Classes gathered per pass over the input and refined together (NRR batches mix them; bounds memory; ranks take whole groups)."),
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Images per output shard."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    amp: Amp | None = typer.Option(None, "--amp", help="Relabel with the teacher under autocast: bf16 or fp16 (default fp32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary (with time per stage)."),
) -> None:
    """Distill real shards into a store: CIDD patch discovery, NRR refinement, DBR relabeling."""
    from nrrstore.devices import amp_dtype
    from nrrstore.distill.pipeline import distill, method_config
    from nrrstore.format.tables import DISTANCE_TYPES
    from nrrstore.models.checkpoint import load_teacher

    if precision not in DISTANCE_TYPES:  # checked before the long distill, not after it
        raise NrrError("--precision", f"unknown precision {precision!r}; use one of {', '.join(DISTANCE_TYPES)}")
    amp_dtype(amp, device)  # refuse a bad --device/--amp before any work
    t = load_teacher(teacher, device=device)
    if relabel_epochs and "://" not in out and Path(out).absolute().parent.is_dir():  # not after the distill
        from nrrstore.labels.relabel import check_labels_fit

        check_labels_fit(Path(out).absolute().parent, ipc * t.num_classes, t.num_classes, relabel_epochs, precision,
                         full_softlabels, option="--relabel-epochs")
    nrr = {"eps": eps, "lr": lr, "iterations": iterations, "alpha_bn": alpha_bn, "optimizer": optimizer}
    if no_refine:
        nrr["refine"] = False
    cfg = method_config(
        method, ipc, t.image_size,
        cidd={"factor": factor, "mipc": mipc, "num_crop": num_crop, "select": select, "per_image": per_image,
              "cam_top": cam_top, "cam_score": cam_score, "correct_only": correct_only, "sources": sources,
              "scale": None if min_scale is None else (min_scale, 1.0), "seed": seed, "batch_size": batch_size},
        nrr=nrr, image_format=image_format, quality=quality, save_cams=save_cams, shard_size=shard_size,
        classes_per_pass=classes_per_pass, nrr_batch_size=nrr_batch_size,
    )
    with ProgressBar() as bar:
        result = distill(inputs, t, out, cfg, overwrite=overwrite, progress=bar)
        summary = dict(result.summary)
        if relabel_epochs:  # on every rank: under torchrun the ranks split relabel's epoch chunks
            from nrrstore.labels.relabel import relabel

            try:
                summary["relabel"] = relabel(out, t, relabel_epochs, precision=precision, seed=seed,
                                             full_softlabels=full_softlabels, device=device, amp=amp, progress=bar,
                                             overwrite=overwrite)
            except NrrError as exc:
                again = " --overwrite" if isinstance(exc, LabelsExistError) else ""
                raise NrrError(exc.path, f"{exc.problem}; the distilled images are complete in {out}: add the labels "
                                         f"with `nrrstore relabel {out} --teacher {teacher} --epochs {relabel_epochs}"
                                         f"{again}`") from None
    if json_out:
        print_json(summary)
    elif summary.get("rank", 0) == 0:
        print(f"{out}: {summary.get('images', '?')} images"
              + (f", DBR distances for {relabel_epochs} epochs" if relabel_epochs else "")
              + f" in {summary.get('total_s', 0):.1f} s")
        if summary.get("classes_done_before"):
            print(f"  resumed: {summary['classes_done_before']} of {summary['classes']} classes were already done")
        if (summary.get("relabel") or {}).get("chunks_resumed"):
            print(f"  resumed: {summary['relabel']['chunks_resumed']} epoch file(s) of labels were already done")


def register(app: typer.Typer) -> None:
    app.command("distill", short_help="Real shards -> distilled store.", epilog=example("distill"))(distill_cmd)
