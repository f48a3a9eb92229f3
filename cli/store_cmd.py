"""`inspect` and `verify`: look inside a store (or shards) and check it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.inspect import inspect_path
from nrrstore_cli._common import ProgressBar, handle_errors, print_json


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@handle_errors
def inspect_cmd(
    path: Path = typer.Argument(..., help="A store folder, a folder of .tar shards, a brace pattern or a shard list."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Write a contact sheet PNG (a row per class)."),
    per_class: int = typer.Option(10, "--per-class", min=1, help="Images per class on the contact sheet."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Counts, per-class counts, image size, bytes per component and recorded parameters."""
    with ProgressBar(enabled=not json_out) as bar:
        info = inspect_path(path, grid=grid, per_class=per_class, progress=bar)
    if json_out:
        print_json(info)
        return
    print(f"{info['kind']}: {info['path']}")
    print(f"  images: {info['num_images']} in {info['num_classes']} classes, {info['shards']} shard(s)")
    if "image" in info:
        im = info["image"]
        print(f"  image: {im['height']}x{im['width']} {im['mode']} {im['encoding']}")
    else:
        print(f"  image sizes: {info['image_sizes']}")
    print("  per class: " + ", ".join(f"{k}={v}" for k, v in info["per_class"].items()))
    for kind, c in sorted(info["components"].items()):
        print(f"  {kind}: {c['files']} file(s), {_human(c['bytes'])}")
    for section in ("teacher", "method", "augmentation", "labels"):
        if info.get(section):
            print(f"  {section}: {info[section]}")
    if grid:
        print(f"  contact sheet: {grid}")


@handle_errors
def verify_cmd(
    store: Path = typer.Argument(..., help="The store folder.", metavar="STORE"),
    no_decode: bool = typer.Option(False, "--no-decode", help="Only check sizes and checksums."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Also replay views with this teacher and compare "
                                          "the distances with the stored ones (catches a wrong teacher, seed or "
                                          "recipe)."),
    sample: int = typer.Option(256, "--sample", min=1, help="Views to replay with --teacher."),
    device: str = typer.Option("cpu", "--device", help="Torch device for --teacher (cpu, cuda...)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check the manifest digest, every file's size and sha256, that every image decodes, labels and keys;
    with --teacher, replay views and compare distances. Exit 1 on problems, one line each."""
    with ProgressBar() as bar:
        problems = verify_store(store, progress=bar, decode=not no_decode)
    replay = None
    if teacher is not None and not problems:
        from nrrstore.distill.replay import replay_check
        from nrrstore.models.checkpoint import load_teacher

        replay = replay_check(store, load_teacher(teacher, device), sample=sample, device=device)
        if replay.problem:
            problems.append(f"{store}: {replay.problem}")
    version = Store(store, check_digest=False).manifest.format_version
    if json_out:
        print_json({"store": str(store), "ok": not problems, "problems": problems, "format_version": version,
                    "replay": replay.to_dict() if replay else None})
    else:
        for p in problems:
            print(p)
        if not problems:
            note = "" if version != "1.0" else " (format 1.0: no manifest digest, so its values are not checked)"
            checked = f"; {replay.views} replayed views agree (mean gap {replay.mean_gap:.4f} nats)" if replay else ""
            print(f"{store}: ok{checked}{note}")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
    app.command("verify")(verify_cmd)
