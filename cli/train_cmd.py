"""`relabel` (DBR distances for a store) and `train-student` (train and evaluate on a store)."""

from __future__ import annotations

import typer

from nrrstore.format.distances import DEFAULT_EPOCHS_PER_FILE
from nrrstore.limits import MAX_EPOCHS, MAX_WORKERS
from nrrstore.train.defaults import STUDENT
from nrrstore_cli._common import (
    PROTOCOL_OPTION,
    Amp,
    CodecFill,
    CodecLoss,
    DbrNorm,
    MixMode,
    Precision,
    ProgressBar,
    StudentProtocolName,
    check_codecs,
    check_label_mode,
    check_size,
    example,
    handle_errors,
    parse_pair,
    print_json,
)

_JSON = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")
_DEVICE = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1...).")
_AMP = typer.Option(None, "--amp", help="Run the teacher under autocast: bf16 or fp16 (default: fp32). Recorded; "
                                        "changes the distances slightly.")
_CACHE_DIR = typer.Option(None, "--cache-dir", metavar="DIR", help="Keep a remote store's shards in this local folder "
                          "after their first read, so later epochs read none remotely (default: $NRRSTORE_CACHE_DIR, "
                          "else no cache). Processes may share it; local stores are never cached.")
_CACHE_SIZE = typer.Option(None, "--cache-size", metavar="SIZE", callback=check_size, help="Cap of --cache-dir, least recently used shards "
                           "evicted first: bytes or e.g. 50GiB, 500MB (default: $NRRSTORE_CACHE_SIZE, else 20GiB).")


def relabel_cmd(
    store: str = typer.Argument(..., help="The store: a folder or an s3://, gs:// or http(s):// URL.", metavar="STORE"),
    teacher: str = typer.Option(..., "--teacher", "-t", help="Teacher checkpoint file (nrrstore format)."),
    epochs: int = typer.Option(300, "--epochs", min=1, max=MAX_EPOCHS, help="Training epochs to label (one view per image each; 1-100,000)."),
    precision: Precision = typer.Option("fp16", "--precision", help="Distance storage: fp16, fp32 or int8."),
    full_softlabels: bool = typer.Option(False, "--full-softlabels", help="Also store full soft labels (KD baseline)."),
    codecs: str = typer.Option("dbr", "--labels", callback=check_codecs, help="Label codecs to write in one teacher pass, comma-separated: "
                               "dbr, full, topk:K, dbrc:K (e.g. dbr,topk:2,dbrc:1). DBR is always written."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Augmentation seed (default: the store's, else 0)."),
    group_size: int | None = typer.Option(None, "--group-size", min=1, help="Partner group size (default: the store's, else 64)."),
    mix: MixMode | None = typer.Option(None, "--mix", help="cutmix, mixup or none (default: the store's, else cutmix)."),
    scale: str | None = typer.Option(None, "--scale", metavar="LOW,HIGH", help="Random-resized-crop area range "
                                     "of the views (default: the store's, else 0.08,1; RDED's evaluation: "
                                     "1/factor,1)."),
    explicit: bool = typer.Option(False, "--explicit", help="Store each view's parameters as columns (explicit mode)."),
    quant_max: float | None = typer.Option(None, "--quant-max", help="int8 scale in nats (default: from epoch 0)."),
    epochs_per_file: int = typer.Option(DEFAULT_EPOCHS_PER_FILE, "--epochs-per-file", min=1, help="Epochs per Parquet file (the resume unit)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Teacher batch size."),
    device: str = _DEVICE,
    amp: Amp | None = _AMP,
    workers: int | None = typer.Option(None, "--workers", min=0, max=MAX_WORKERS, help="Decoding processes (default: 0 on cpu, "
                                                                        "one per CPU up to 4 on a GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing distances and soft labels."),
    as_json: bool = _JSON,
) -> None:
    """Compute the teacher's DBR distances for every image and epoch; rerun to resume a killed job.

    Under torchrun the ranks split the epoch chunks (the result is byte-identical to one rank).
    """
    # torch-backed modules load inside the commands, so that `nrrstore --help` answers at once
    from nrrstore.devices import amp_dtype
    from nrrstore.format.reader import Store
    from nrrstore.labels.relabel import default_recipe, relabel
    from nrrstore.models import load_teacher

    st = Store(store)
    amp_dtype(amp, device)  # refuse a bad --device/--amp before loading anything
    t = load_teacher(teacher, device)
    recipe = default_recipe(st, t, seed=seed, group_size=group_size, mix=mix,
                            scale=parse_pair(scale, "--scale") if scale else None)
    with ProgressBar() as bar:
        summary = relabel(st, t, epochs, recipe, precision, full_softlabels, mode="explicit" if explicit else "seeded",
                          epochs_per_file=epochs_per_file, batch_size=batch_size, quant_max=quant_max,
                          overwrite=overwrite, device=device, amp=amp, workers=workers, codecs=codecs,
                          progress=bar)
    if as_json:
        print_json(summary)
        return
    if summary["rank"] != 0:
        return
    print(f"relabelled {summary['views']} views ({summary['images']} images x {summary['epochs']} epochs) of {store}: "
          f"{summary['distance_bytes']} bytes of distances ({summary['bytes_per_view']:.2f} B/view, "
          f"{summary['precision']}, {summary['mode']}) in {summary['seconds']:.1f} s")
    per_codec = summary.get("codec_bytes_per_view") or {}
    if len(per_codec) > 1:
        print("  bytes per view: " + ", ".join(f"{k} {v:.2f}" for k, v in per_codec.items()))
    if summary["chunks_resumed"]:
        print(f"  resumed: {summary['chunks_resumed']} file(s) were already done")
    if summary["clipped"]:
        print(f"  int8: {summary['clipped']} distance(s) above {summary['quant_max']} were clipped")


def train_student_cmd(
    store: str = typer.Argument(..., help="The store: a folder or an s3://, gs:// or http(s):// URL.", metavar="STORE"),
    val: str = typer.Option(..., "--val", help="Held-out real images: shard folder, pattern, list or URL."),
    arch: str = typer.Option("convnet3", "--arch", help="Student architecture."),
    epochs: int = typer.Option(300, "--epochs", min=1, max=MAX_EPOCHS, help="Student epochs (1-100,000)."),
    labels: str = typer.Option("dbr", "--labels", callback=check_label_mode, help="dbr (the two distances), kd (full soft labels), onehot, or a "
                               "codec the store holds: topk:K, dbrc:K (KD on the distribution it implies)."),
    alpha_dbr: float = typer.Option(STUDENT["alpha_dbr"], "--alpha-dbr", min=0.0, help="Weight of L_dbr."),
    dbr_norm: DbrNorm = typer.Option(STUDENT["dbr_norm"], "--dbr-norm", help="L_dbr norm (l1: chosen on validation data, README)."),
    kd_temperature: float | None = typer.Option(None, "--kd-temperature", min=1e-6, help="KD temperature (kd and "
                                                "codecs; default: 4, under --protocol rded 20)."),
    codec_fill: CodecFill = typer.Option(STUDENT["codec_fill"], "--codec-fill", help="Where a codec's unstored mass "
                                         "goes: prior (the store's class prior) or uniform."),
    codec_loss: CodecLoss = typer.Option(STUDENT["codec_loss"], "--codec-loss", help="A codec student's objective: "
                                         "kd (on the implied distribution) or match (DBR's, every stored distance)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: RDED's rule (10/50/100 "
                                             "at IPC 1/10/50 for 10 classes)."),
    lr: float | None = typer.Option(None, "--lr", min=1e-12, help="AdamW learning rate (default: 0.001; cosine "
                                    "to 0, under --protocol rded to half)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", min=0.0, help="AdamW weight decay "
                                              "(default: 0.01)."),
    protocol: StudentProtocolName = PROTOCOL_OPTION,
    seed: int = typer.Option(0, "--seed", min=0, help="Student initialisation seed."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Checkpoint file, written after every epoch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --checkpoint if it exists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --checkpoint instead of refusing."),
    workers: int = typer.Option(0, "--workers", min=0, max=MAX_WORKERS, help="DataLoader worker processes."),
    cycle: bool = typer.Option(False, "--cycle", help="Reuse stored epochs when training longer than stored."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Also evaluate every N epochs (0: only at the end)."),
    cache_dir: str | None = _CACHE_DIR,
    cache_size: str | None = _CACHE_SIZE,
    device: str = _DEVICE,
    as_json: bool = _JSON,
) -> None:
    """Train a student from scratch on the store and report top-1 on real held-out images."""
    from nrrstore.format.reader import Store
    from nrrstore.format.shard_cache import shard_cache
    from nrrstore.train.student import summary_without_model, train_student

    cache = shard_cache(cache_dir, cache_size)  # without --cache-dir: $NRRSTORE_CACHE_DIR, else no cache
    with ProgressBar() as bar:
        result = train_student(Store(store, cache=cache), val, arch=arch, epochs=epochs, labels=labels, batch_size=batch_size, lr=lr,
                               weight_decay=weight_decay, alpha_dbr=alpha_dbr, dbr_norm=dbr_norm,
                               kd_temperature=kd_temperature, codec_fill=codec_fill, codec_loss=codec_loss,
                               seed=seed, device=device, workers=workers, cycle=cycle, checkpoint=checkpoint,
                               resume=resume, eval_every=eval_every, progress=bar, overwrite=overwrite,
                               protocol=protocol)
    summary = summary_without_model(result)
    if as_json:
        print_json(summary)
        return
    print(f"{arch} on {store} ({labels} labels, {epochs} epochs, {protocol} protocol): top-1 "
          f"{summary['top1'] * 100:.2f}% on {summary['val_images']} held-out images")
    if "top1_best_last20" in summary:
        print(f"  best of the tests in the last 20% of epochs (RDED's figure): {summary['top1_best_last20'] * 100:.2f}%")


def register(app: typer.Typer) -> None:
    app.command("relabel", short_help="DBR distances for a store.", epilog=example("relabel"))(handle_errors(relabel_cmd))
    app.command("train-student", short_help="Train and test a student.", epilog=example("train-student"))(handle_errors(train_student_cmd))
