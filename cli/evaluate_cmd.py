"""`evaluate`: is a store any good? Students on it (and on random real images) against real test data."""

from __future__ import annotations

from pathlib import Path

import typer

from nrrstore.format import fs
from nrrstore.limits import MAX_EPOCHS, MAX_SEEDS, MAX_WORKERS
from nrrstore.train.defaults import STUDENT
from nrrstore_cli._common import (
    PROTOCOL_OPTION,
    CodecFill,
    CodecLoss,
    DbrNorm,
    ProgressBar,
    StudentProtocolName,
    check_label_modes,
    check_size,
    example,
    handle_errors,
    print_json,
)


@handle_errors
def evaluate_cmd(
    store: str = typer.Argument(..., help="The store to evaluate (a folder or a URL).", metavar="STORE"),
    val: str = typer.Option(..., "--val", help="Real held-out shards to test students on."),
    train: str | None = typer.Option(None, "--train", help="Real training shards: adds the random-real "
                                        "baseline at the same IPC."),
    teacher: str | None = typer.Option(None, "--teacher", help="The store's teacher, to relabel the baseline "
                                          "(default: the path the store records)."),
    seeds: int = typer.Option(3, "--seeds", min=1, max=MAX_SEEDS, help="Students per cell (1-1,000)."),
    epochs: int = typer.Option(300, "--epochs", min=1, max=MAX_EPOCHS, help="Student epochs (1-100,000)."),
    labels: str | None = typer.Option(None, "--labels", callback=check_label_modes, help="Comma-separated label "
                                         "kinds: dbr, kd, onehot, topk:K, dbrc:K (default: all the store has)."),
    arch: str = typer.Option("convnet3", "--arch", help="Student architecture."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Student batch size (default: "
                                             "RDED's rule, 10/50/100 at IPC 1/10/50)."),
    lr: float | None = typer.Option(None, "--lr", min=1e-12, help="AdamW learning rate (default: 0.001)."),
    alpha_dbr: float = typer.Option(STUDENT["alpha_dbr"], "--alpha-dbr", help="Weight of L_dbr."),
    dbr_norm: DbrNorm = typer.Option(STUDENT["dbr_norm"], "--dbr-norm", help="L_dbr norm (l1: chosen on validation data, README)."),
    kd_temperature: float | None = typer.Option(None, "--kd-temperature", min=1e-6, help="KD temperature "
                                                "(default: 4, under --protocol rded 20)."),
    protocol: StudentProtocolName = PROTOCOL_OPTION,
    codec_fill: CodecFill = typer.Option(STUDENT["codec_fill"], "--codec-fill", help="Where a codec's unstored mass "
                                         "goes: prior (the store's class prior) or uniform."),
    codec_loss: CodecLoss = typer.Option(STUDENT["codec_loss"], "--codec-loss", help="A codec student's objective: "
                                         "kd (on the implied distribution) or match (DBR's, every stored distance)."),
    full_acc: float | None = typer.Option(None, "--full-acc", help="Top-1 (fraction, e.g. 0.93) of the "
                                             "student on the full real data with hard labels: adds HLR and LRS."),
    work: str | None = typer.Option(None, "--work", help="Folder for checkpoints and cell results "
                                        "(default: .eval-STORE beside the store); rerun to resume."),
    plot: str | None = typer.Option(None, "--plot", help="Also draw the table as a chart: .png, .pdf or .svg "
                                       "(needs matplotlib: pip install 'nrrstore[plots]')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1...)."),
    workers: int = typer.Option(0, "--workers", min=0, max=MAX_WORKERS, help="Loader worker processes."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", metavar="DIR", help="Keep a remote store's shards in "
                                         "this local folder after their first read, so later epochs and students "
                                         "read none remotely (default: $NRRSTORE_CACHE_DIR, else no cache)."),
    cache_size: str | None = typer.Option(None, "--cache-size", metavar="SIZE", callback=check_size, help="Cap of --cache-dir, least "
                                          "recently used shards evicted first: bytes or e.g. 50GiB (default: "
                                          "$NRRSTORE_CACHE_SIZE, else 20GiB)."),
    json_out: bool = typer.Option(False, "--json", help="Print the full result as JSON on stdout."),
) -> None:
    """Train students on STORE for every label kind and seed (and on random real images with --train),
    test them on --val, and report top-1 mean +- std and DD-Ranking's IOR, HLR and LRS."""
    from nrrstore.evaluation import StudentProtocol, evaluate_store, format_table
    from nrrstore.format.shard_cache import shard_cache
    from nrrstore.plots import check_chart_output, plot_result

    if plot is not None:
        # format, matplotlib, the file (never inside an input: a chart in the store fails its verify): before
        # hours of training, not after
        check_chart_output(plot, overwrite, inputs={"STORE": store, "--val": val, "--train": train})
    kinds = [k.strip() for k in labels.split(",") if k.strip()] if labels else None
    protocol = StudentProtocol(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, alpha_dbr=alpha_dbr,
                               dbr_norm=dbr_norm, kd_temperature=kd_temperature,
                               codec_fill=codec_fill, codec_loss=codec_loss, protocol=protocol)
    work_dir = work if work is not None else default_work(store)
    cache = shard_cache(cache_dir, cache_size)  # without --cache-dir: $NRRSTORE_CACHE_DIR, else no cache
    with ProgressBar() as bar:
        result = evaluate_store(store, val, work_dir, train=train, teacher=teacher, seeds=seeds, labels=kinds,
                                protocol=protocol, full_acc=full_acc, device=device, workers=workers, progress=bar,
                                cache=cache)
    if plot is not None:
        plot_result(result, plot, overwrite=overwrite)
        result["plot"] = str(plot)
    if json_out:
        print_json(result)
    else:
        print(format_table(result))
        if result["cells_resumed"]:
            print(f"({result['cells_resumed']} cell(s) were already done in {work_dir})")


def default_work(store: str) -> Path:
    """``.eval-NAME`` beside a local store; in the current folder for a store given by URL."""
    loc = fs.location(store)
    return loc.with_name(f".eval-{loc.name}") if isinstance(loc, Path) else Path(f".eval-{loc.name}")


def register(app: typer.Typer) -> None:
    app.command("evaluate", short_help="Students on a store vs random real.", epilog=example("evaluate"))(evaluate_cmd)
