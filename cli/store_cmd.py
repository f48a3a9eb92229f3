"""`inspect` and `verify`: look inside a store (or shards) and check it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

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
    store: Path = typer.Argument(..., help="The store folder."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Only check sizes and checksums."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check every file's size and sha256, that every image decodes, labels and keys. Exit 1 on problems."""
    with ProgressBar(enabled=not json_out) as bar:
        problems = verify_store(store, progress=bar, decode=not no_decode)
    if json_out:
        print_json({"store": str(store), "ok": not problems, "problems": problems})
    else:
        for p in problems:
            print(p)
        if not problems:
            print(f"{store}: ok")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
    app.command("verify")(verify_cmd)
