"""`inspect` and `verify`: look inside a store (or shards) and check it."""

from __future__ import annotations

import sys

import typer

from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.inspect import format_info, inspect_path
from nrrstore_cli._common import ProgressBar, example, handle_errors, print_json


@handle_errors
def inspect_cmd(
    path: str = typer.Argument(..., help="A store, a folder of .tar shards, a brace pattern or a shard list "
                               "(paths or URLs).", metavar="PATH"),
    grid: str | None = typer.Option(None, "--grid", help="Write a contact sheet (.png, .jpg or .jpeg): a row "
                                        "per class, a column per image (each followed by its CAM when the store "
                                        "keeps CAMs)."),
    per_class: int = typer.Option(10, "--per-class", min=1, help="Images per class on the contact sheet."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --grid file."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Counts, per-class counts, image size, bytes per component and recorded parameters."""
    with ProgressBar() as bar:
        info = inspect_path(path, grid=grid, per_class=per_class, progress=bar, overwrite=overwrite)
    if json_out:
        print_json(info)
    else:
        print(format_info(info))


@handle_errors
def verify_cmd(
    store: str = typer.Argument(..., help="The store: a folder or an s3://, gs:// or http(s):// URL.", metavar="STORE"),
    no_decode: bool = typer.Option(False, "--no-decode", help="Only check sizes and checksums."),
    teacher: str | None = typer.Option(None, "--teacher", help="Also replay views with this teacher and compare "
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
        from nrrstore.labels.replay_check import replay_check, teacher_identity_problems, view_size_problem
        from nrrstore.models.checkpoint import load_teacher

        model = load_teacher(teacher, device)
        manifest_now = Store(store).manifest
        problems.extend(f"{store}: {p}" for p in teacher_identity_problems(manifest_now, model))
        if view_size_problem(manifest_now, model) is None:  # views of another size cannot be replayed
            replay = replay_check(store, model, sample=sample, device=device)
        if replay is not None and replay.problem:
            problems.append(f"{store}: {replay.problem}")
    manifest = Store(store, check_digest=False).manifest
    version = manifest.format_version
    teacher_note = None
    if manifest.labels.get("distances") and not problems:  # labels from a teacher: can it be found again?
        from nrrstore.models.checkpoint import teacher_record_problem

        teacher_note = teacher_record_problem(manifest.teacher or {})
    if json_out:
        print_json({"store": str(store), "ok": not problems, "problems": problems, "format_version": version,
                    "replay": replay.to_dict() if replay else None, "teacher_record": teacher_note})
    else:
        for p in problems:
            print(p)
        if not problems:
            note = "" if version != "1.0" else " (format 1.0: no manifest digest, so its values are not checked)"
            checked = f"; {replay.views} replayed views agree (mean gap {replay.mean_gap:.4f} nats)" if replay else ""
            print(f"{store}: ok{checked}{note}")
            if teacher_note:
                print(f"{store}: note: {teacher_note}; give `evaluate` its teacher with --teacher T.pt")
    if problems:  # the report is on stdout; stderr gets the one line every failing command gives
        print(f"nrrstore: {store}: {len(problems)} problem(s) found" + ("" if json_out else ", listed on stdout"),
              file=sys.stderr)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("inspect", short_help="Summary of a store or shards.", epilog=example("inspect"))(inspect_cmd)
    app.command("verify", short_help="Check a store (and its labels).", epilog=example("verify"))(verify_cmd)
