"""The `nrrstore` command: a thin Typer layer over the library's Python API."""

from __future__ import annotations

import gc

import typer

from nrrstore import __version__
from nrrstore_cli._common import OneLineErrors, check_memory_limit

check_memory_limit()  # before anything maps numpy's or pyarrow's libraries

app = typer.Typer(
    cls=OneLineErrors,
    rich_markup_mode=None,  # plain help: wraps at any width, never cuts an option name or a list with "..."
    name="nrrstore",
    help="Produce, store and stream distilled image datasets (NRR-DD).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"nrrstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """nrrstore: distill, inspect, verify and stream distilled datasets."""


def _register() -> None:
    # One module per command group; each exposes `register(app)`.
    from nrrstore_cli import (
        convert_cmd,
        distill_cmd,
        evaluate_cmd,
        prepare_cmd,
        store_cmd,
        teacher_cmd,
        train_cmd,
    )

    for module in (prepare_cmd, store_cmd, teacher_cmd, distill_cmd, train_cmd, evaluate_cmd, convert_cmd):
        module.register(app)


try:
    _register()  # imports the command modules (pyarrow, numpy): the first place memory can run out
except (ImportError, MemoryError) as _exc:
    from nrrstore_cli._common import fail, memory_hint, out_of_memory

    if not out_of_memory(_exc):
        raise
    fail(f"{out_of_memory(_exc)}; {memory_hint({})}")


def main() -> None:
    try:
        app()
    finally:
        # Nothing is collected after this: the interpreter's own collections at exit walk torch's ~340k
        # objects and kept a finished command alive 1.5 s after its last bar (4 s on a busy machine).
        gc.freeze()


if __name__ == "__main__":
    main()
