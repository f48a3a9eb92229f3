"""What every command shares: one-line errors and warnings, JSON output and progress bars on stderr.

The contract with users: bad input gives exactly one line ``nrrstore: <file or option>: <problem>``
on stderr and exit code 1 (2 for usage errors such as an unknown option), never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer import _click
from typer.core import TyperArgument, TyperGroup

from nrrstore.errors import NrrError, NrrWarning, is_out_of_memory, os_problem, path_text
from nrrstore_cli.supervise import RAISE_LIMIT, SUPERVISOR_FD_ENV, address_space_cap

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

P = ParamSpec("P")
R = TypeVar("R")
# The options with a fixed set of values, as types: help lists the values (``--method <nrr|rded|random>``)
# and a bad value is a usage error (exit 2) naming the option and the values. Each equals the library's
# own tuple (tests/test_cli_help.py checks it), which stays the source of truth for the Python API.
Method = Literal["nrr", "rded", "random"]  # nrrstore.distill.pipeline.METHODS
Select = Literal["low", "high", "random"]  # nrrstore.distill.cidd_config.SELECT
PerImage = Literal["cam", "score"]  # cidd_config.PER_IMAGE
CamScore = Literal["share", "density", "excess"]  # cidd_config.CAM_SCORES
Sources = Literal["random", "first"]  # cidd_config.SOURCES
NrrOptimizer = Literal["sgd", "adam"]  # nrrstore.distill.nrr.OPTIMIZERS
TeacherOptimizer = Literal["sgd", "adam", "adamw"]  # nrrstore.train.teacher.OPTIMIZERS
StoreImageFormat = Literal["png", "webp", "jpg", "jpeg"]  # pipeline.IMAGE_FORMATS
ShardImageFormat = Literal["png", "webp", "jpg", "source"]  # nrrstore.sources.prepare._IMAGE_FORMATS
Precision = Literal["fp16", "fp32", "int8"]  # nrrstore.format.distances.DISTANCE_TYPES
Amp = Literal["bf16", "fp16", "fp32"]  # nrrstore.devices.AMP_MODES, and fp32: no autocast (the default)
ColourMode = Literal["keep", "L", "RGB"]  # nrrstore.sources.prepare.MODES
Norm = Literal["group", "instance", "batch", "none"]  # nrrstore.models.convnet.NORMS
CodecFill = Literal["prior", "uniform"]  # nrrstore.train.defaults.CODEC_FILLS
CodecLoss = Literal["kd", "match"]  # nrrstore.train.defaults.CODEC_LOSSES
DbrNorm = Literal["l2", "l1", "smooth_l1"]  # nrrstore.train.losses.DBR_NORMS
StudentProtocolName = Literal["nrrstore", "rded"]  # nrrstore.train.defaults.PROTOCOLS
PROTOCOL_OPTION = typer.Option("nrrstore", "--protocol", help="nrrstore, or rded: RDED's evaluation (BatchNorm "
                               "ConvNets, KL at T 20 without T^2 on kd labels, AdamW cosine to half, best of the last "
                               "20% reported beside the last epoch).")
"""train-student's and evaluate's --protocol."""
MixMode = Literal["cutmix", "mixup", "none"]  # nrrstore.replay.recipe.MIX_MODES
SoftLabelFormat = Literal["sre2l"]  # the formats convert-softlabels reads

err_console = Console(stderr=True)
#: Set to 1 to see the traceback of an unexpected error instead of its one-line summary.
TRACEBACK_ENV = "NRRSTORE_TRACEBACK"
#: Parameters that name a command's output, in the order tried for an OSError that names no file.
_OUTPUT_PARAMS = ("out", "checkpoint", "grid", "plot", "work", "store")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line ``nrrstore: message`` on stderr and exit with ``code``."""
    try:
        print(f"nrrstore: {' '.join(message.split())}", file=sys.stderr)
    except MemoryError:  # the line itself could not be made: say the least that is true
        os.write(2, b"nrrstore: out of memory\n")
    raise SystemExit(code)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """nrrstore's own warnings as one line; other libraries' (torch's pickle notes...) are not for users."""
    if issubclass(category, NrrWarning):
        print(f"nrrstore: warning: {' '.join(str(message).split())}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, so that it cleans up exactly as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: signal -> (the one line, exit code 128 + signal number, as a shell reports a killed command)
_STOP_SIGNALS = {signal.SIGTERM: ("terminated", 143), signal.SIGHUP: ("hung up", 129)}


def _stop_on_signals() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into `Terminated` in this process; returns the function that restores the old handlers.

    Processes forked from this one (pool and loader workers) inherit the handler; there it re-raises the
    signal with the default action, so a worker that its pool terminates simply ends.
    """
    owner = os.getpid()
    stopping = [False]

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _RESPONDED.set()
        if stopping[0]:  # a second copy (a whole cgroup signalled, and again through a parent): the cleanup runs on
            return
        stopping[0] = True
        raise Terminated(signum)

    def interrupted(signum: int, frame: Any) -> None:  # Python's own Ctrl-C, telling the stop watch it ran
        if os.getpid() == owner:
            _RESPONDED.set()
        raise KeyboardInterrupt

    try:  # an inherited "ignore" stays (`nohup nrrstore ...` must survive the terminal's hang-up)
        old = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        return lambda: None
    unwatch = _watch_stuck(set(old))

    def restore() -> None:
        unwatch()
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


STUCK_GRACE_S = 10.0
"""How long a stop signal may wait for the main thread before the process ends without its cleanup."""
_RESPONDED = threading.Event()
"""Set when the main thread runs a stop signal's handler (it is not stuck: its cleanup takes what it takes, on a
busy machine well over `STUCK_GRACE_S`) or the command ends."""
_WATCHING = [False]
_FORK_HOOK = [False]


def _no_wakeup_in_child() -> None:
    if _WATCHING[0]:
        with contextlib.suppress(ValueError):  # forked from another thread: no wakeup fd to clear
            signal.set_wakeup_fd(-1)
        _WATCHING[0] = False


def _watch_stuck(handled: set[signal.Signals]) -> Callable[[], None]:
    """End the process when a stop signal (of ``handled``, those whose handlers are ours) is not handled within
    `STUCK_GRACE_S`. Python runs signal handlers
    between bytecodes only: a main thread blocked inside a C library (a Parquet read deadlocked by a failed
    allocation under a memory cap, a thread pool waiting on a dead worker) would ignore SIGTERM forever. The
    interpreter's C handler writes each signal's number to a wakeup pipe; a thread reads it and, if the command
    has neither run the signal's handler nor finished by then, prints the stop line and exits with the signal's
    code. A handler that ran means the main thread is alive and doing its cleanup, however long it takes; each
    later signal gets a grace period of its own (a cleanup stuck in C is stopped the same way). Returns the
    function that stops watching (forked children never watch: their signals are their own)."""
    named = {**_STOP_SIGNALS, signal.SIGINT: ("interrupted", 130)}
    codes = {int(sig): named[sig] for sig in handled if sig in named}
    _RESPONDED.clear()
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        os.close(r)
        os.close(w)
        return lambda: None
    if not _FORK_HOOK[0]:  # once per process: hooks cannot be removed
        os.register_at_fork(after_in_child=_no_wakeup_in_child)
        _FORK_HOOK[0] = True
    _WATCHING[0] = True
    done = threading.Event()

    def watch() -> None:
        with os.fdopen(r, "rb", buffering=0) as pipe:  # closed when the watch ends
            while not done.is_set():
                data = pipe.read(64)
                stops = [codes[b] for b in data or b"" if b in codes]
                if not data:
                    return
                if stops and _RESPONDED.wait(STUCK_GRACE_S):
                    _RESPONDED.clear()  # answered: a later signal (a cleanup stuck in C) gets its own grace
                    continue
                if stops:
                    what, code = stops[0]
                    os.write(2, f"nrrstore: {what} (stuck in a library call for {STUCK_GRACE_S:.0f} s; stopped "
                                "without its cleanup)\n".encode())
                    os._exit(code)

    def unwatch() -> None:
        done.set()
        _RESPONDED.set()  # wakes a watch waiting on a signal the command outran
        _WATCHING[0] = False
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(previous)
        os.close(w)  # the reading thread sees the end of the pipe and returns (it closes nothing else)

    try:
        threading.Thread(target=watch, name="nrrstore-stop-watch", daemon=True).start()
    except RuntimeError:  # no memory for one more thread: the command runs unwatched (and will say why it ends)
        unwatch()
        os.close(r)
        return lambda: None
    return unwatch


_MEMORY_OPTIONS = {"batch_size": "--batch-size", "nrr_batch_size": "--nrr-batch-size", "workers": "--workers",
                   "cache_size": "--cache-size", "mipc": "--mipc", "size": "--size", "resize": "--resize",
                   "crop_size": "--crop-size"}
"""The command parameters that set how much memory a job holds at once (--epochs and --seeds do not: plans are
lazy and bounded)."""


def memory_hint(options: dict[str, Any]) -> str:
    """What to change after running out of memory: the size options this command has, with the values it ran
    with, so the line names the one to lower (not options the command lacks)."""
    named = [f"{flag} (was {options[k]})" if options[k] is not None else f"{flag}"
             for k, flag in _MEMORY_OPTIONS.items() if k in options]
    return f"{RAISE_LIMIT} or lower {', '.join(named)}" if named else RAISE_LIMIT


def _tell_supervisor(hint: str) -> None:
    """Under a memory cap the command runs in a child of `nrrstore_cli.supervise`: send it this command's memory
    hint, which it prints if a C library kills the command (the parent has not parsed the options)."""
    fd = os.environ.pop(SUPERVISOR_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), hint.encode())
            os.close(int(fd))
MIN_ADDRESS_SPACE = 256 * 2**20
"""Below this address-space limit numpy and pyarrow cannot even be loaded (their libraries map more)."""


def out_of_memory(exc: BaseException) -> str | None:
    """What an exception says when it is the machine's memory running out, in words (else None): MemoryError, a
    shared library that could not be mapped, torch's failed allocations (CPU and CUDA)."""
    text = str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, ImportError) and ("failed to map segment" in text or "cannot allocate memory" in text.lower()):
        return f"out of memory while loading a library ({text.split(':')[0]})"
    if is_out_of_memory(exc):
        wanted = re.search(r"allocate (\d+) bytes", text)
        return "out of memory" + (f" (an allocation of {int(wanted.group(1)):,} bytes failed)" if wanted else "")
    if isinstance(exc, SystemError) and "without exception set" in text and address_space_cap() is not None:
        # A C extension whose allocation failed and that did not say so (seen under `ulimit -v`, in pyarrow).
        return "out of memory (a library call failed without saying why, under the memory limit)"
    return None


def check_memory_limit() -> None:
    """Refuse, in one line, an address-space limit too small to load the libraries (numpy's BLAS would otherwise
    abort with its own message, or an import would fail with a traceback)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        fail(f"the memory limit (ulimit -v) is {soft // 2**20} MiB; nrrstore needs at least "
             f"{MIN_ADDRESS_SPACE // 2**20} MiB to load its libraries, and more to work")


def _with_kept(stopped: str) -> str:
    """``terminated`` plus what the stopped job keeps for its rerun (`nrrstore.kept`)."""
    from nrrstore.kept import kept_text

    text = kept_text()
    return f"{stopped}; kept {text}: rerun the same command to resume" if text else stopped


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command so that every failure is one line on stderr and a non-zero exit code.

    `NrrError` (the library's own) is printed as is; an operating-system error names its file, else the
    command's output; anything else is a bug, summarized in one line unless ``NRRSTORE_TRACEBACK=1``.
    Library warnings are printed as one ``nrrstore: warning:`` line each. SIGTERM and SIGHUP stop the
    command like Ctrl-C (its cleanup runs, nothing is left behind) with exit code 143 / 129.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _tell_supervisor(memory_hint(kwargs))
        shown = warnings.showwarning
        warnings.showwarning = _show_warning
        restore = _stop_on_signals()
        try:
            return fn(*args, **kwargs)
        except NrrError as exc:
            fail(exc.message)
        except BrokenPipeError:
            raise  # stdout closed by a pager or `head`: not an error of ours (handled in OneLineErrors)
        except OSError as exc:
            if is_out_of_memory(exc):  # ENOMEM from mmap or a library: not a problem of the file it names
                fail(f"out of memory; {memory_hint(kwargs)}")
            options: dict[str, Any] = kwargs  # the command's parameters (output paths: str or Path)
            where = exc.filename or next((options[k] for k in _OUTPUT_PARAMS if options.get(k) is not None), None)
            fail(f"{path_text(where)}: {os_problem(exc)}" if where is not None else os_problem(exc))
        except Terminated as exc:
            what, code = _STOP_SIGNALS[signal.Signals(exc.signum)]
            fail(_with_kept(what), code)
        except KeyboardInterrupt:
            fail(_with_kept("interrupted"), 130)
        except (SystemExit, typer.Exit, typer.Abort, _click.exceptions.ClickException):
            raise
        except Exception as exc:  # a bug: still one line, unless asked for the traceback
            if out_of_memory(exc):
                try:
                    line = f"{out_of_memory(exc)}; {memory_hint(kwargs)}"
                except MemoryError:
                    line = "out of memory"
                fail(line)
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (rerun with {TRACEBACK_ENV}=1 for the traceback, "
                 "and please report it)")
        finally:
            warnings.showwarning = shown
            restore()

    return wrapper


class OneLineErrors(TyperGroup):
    """The root command group: usage errors (unknown option, bad value) as one line, exit code 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:
            try:
                print(exc.format_message())  # a group called without a command: its help
            except BrokenPipeError:
                _quiet_stdout()
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            fail(usage_error_line(exc), exc.exit_code)
        except typer.Abort:
            fail("interrupted", 130)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(1)
        except (MemoryError, ImportError) as exc:  # while parsing the options (typer imports pydantic then)
            if not out_of_memory(exc):
                raise
            fail(f"{out_of_memory(exc)}; {memory_hint({})}")
        sys.exit(code if isinstance(code, int) else 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into a closed pipe stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _usage_name(self: TyperArgument) -> str:
    """``STORE`` / ``[STORE]`` in usage lines (Typer 0.29 writes required arguments as ``{STORE}``)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


if hasattr(TyperArgument, "_usage_display_name"):
    TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]  # deliberate patch, see _usage_name


def usage_error_line(exc: _click.exceptions.ClickException) -> str:
    """``--ipc: input should be ... (see nrrstore distill --help)``: the option first, like a file name."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    param = getattr(exc, "param", None)
    if isinstance(exc, _click.exceptions.MissingParameter) and param is not None:
        return f"{_param_name(param)}: missing (required){hint}"
    if isinstance(exc, _click.exceptions.NoSuchOption):
        maybe = f" (possible options: {', '.join(exc.possibilities)})" if exc.possibilities else ""
        return f"{exc.option_name}: no such option{maybe}{hint}"
    message = exc.message if isinstance(exc, _click.exceptions.BadParameter) else exc.format_message()
    message = re.sub(r"^value error, ", "", message.rstrip("."), flags=re.IGNORECASE)  # typer's validation prefix
    message = message[:1].lower() + message[1:]
    if param is not None:
        return f"{_param_name(param)}: {message}{hint}"
    command = re.fullmatch(r"no such command '(.+?)'\.?\s*(?:did you mean (.+?)\??)?", message, re.IGNORECASE)
    if command:
        maybe = f" (did you mean {command.group(2)}?)" if command.group(2) else ""
        return f"{command.group(1)}: no such command{maybe}{hint}"
    extra = re.fullmatch(r"got unexpected extra arguments?(?:\(s\))? \((.+)\)", message)
    if extra:
        return f"{extra.group(1)}: unexpected extra argument{hint}"
    return f"{ctx.command_path if ctx is not None else 'nrrstore'}: {message}{hint}"


def _param_name(param: Any) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")] or list(getattr(param, "opts", []))
    if getattr(param, "param_type_name", "") == "argument" or not opts:
        return (getattr(param, "metavar", None) or param.name or "argument").upper()
    return opts[0]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


class CountColumn(ProgressColumn):
    """``done/total``, or just ``done`` while the total is unknown (never ``256/?``)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else f"{done}", style="progress.download")


class RateColumn(ProgressColumn):
    """Items per second of the task (images/s, views/s...), once measurable."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


PROGRESS_LOG_ENV = "NRRSTORE_PROGRESS_LOG"
"""A file to which every progress update is appended as one JSON line (task, done, total), written as it happens:
for job dashboards and for tests that stop a command at a known point of its work, not after a sleep."""


class ProgressBar:
    """A rich progress bar on stderr exposed as a ``progress(task, done, total)`` callback.

    The library reports progress through plain callbacks; this adapter shows them with a count, the
    rate and the time left. It shows whenever stderr is a terminal, whatever stdout carries (JSON
    included), and stays silent in logs and pipes.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), CountColumn(), RateColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
            disable=not (err_console.is_terminal if enabled is None else enabled),
        )
        self._tasks: dict[str, Any] = {}
        log = os.environ.get(PROGRESS_LOG_ENV)
        self._log = open(log, "a", encoding="utf-8", buffering=1) if log else None  # noqa: SIM115 - closed in __exit__

    def __call__(self, task: str, done: int, total: int | None = None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=done, total=total)
        if self._log is not None:
            self._log.write(json.dumps({"task": task, "done": int(done), "total": total}) + "\n")

    def __enter__(self) -> Self:
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)
        if self._log is not None:
            self._log.close()


# One example per command, shown at the end of its --help (and run by tests/test_cli_help.py's README check).
EXAMPLES = {
    "prepare idx": "nrrstore prepare idx images-idx3-ubyte.gz labels-idx1-ubyte.gz --out shards/",
    "prepare imagefolder": "nrrstore prepare imagefolder cifar10/train --out c10 --format source",
    "teacher train": "nrrstore teacher train --in shards/ --epochs 20 --flip --out teacher.pt",
    "teacher eval": "nrrstore teacher eval --teacher teacher.pt --in test-shards/",
    "distill": "nrrstore distill --in shards/ --ipc 10 --teacher teacher.pt --out distilled/",
    "relabel": "nrrstore relabel distilled/ --teacher teacher.pt --epochs 300 --overwrite",
    "train-student": "nrrstore train-student distilled/ --val test-shards/ --epochs 300",
    "evaluate": "nrrstore evaluate distilled/ --val test/ --train shards/ --labels dbr,onehot",
    "inspect": "nrrstore inspect distilled/ --grid sheet.png",
    "verify": "nrrstore verify distilled/ --teacher teacher.pt",
    "convert-softlabels": "nrrstore convert-softlabels labels/ --images syn/ --out s/ --teacher t.pt",
    "import rded": "nrrstore import rded rded-syn/ --out store/ --teacher teacher.pt",
    "size-report": "nrrstore size-report distilled/ --plot sizes.png",
    "export": "nrrstore export distilled/ folders/",
}


def example(command: str) -> str:
    """The help epilog of ``command`` (``\\b`` keeps click from rewrapping it; it is indented 4, so keep each
    example within 76 characters for 80-column help)."""
    return f"\b\nExample:\n  {EXAMPLES[command]}"


def check_label_mode(value: str | None) -> str | None:
    """``--labels`` of the student commands: a usage error (exit 2) for an unknown mode, before any file is read."""
    if value is None:
        return None
    from nrrstore.errors import NrrError
    from nrrstore.format.codecs import LABEL_MODES, label_mode

    try:
        return label_mode(value)
    except NrrError:
        raise typer.BadParameter(f"'{value}' is not one of " + ", ".join(f"'{m}'" for m in LABEL_MODES)) from None


def check_label_modes(value: str | None) -> str | None:
    """``evaluate --labels``: a comma-separated list of label modes, each known and named once (exit 2 otherwise)."""
    if value is None:
        return None
    from nrrstore.errors import NrrError
    from nrrstore.format.codecs import LABEL_MODES, label_mode

    modes: list[str] = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        try:
            mode = label_mode(part)
        except NrrError:
            raise typer.BadParameter(f"'{part}' is not one of " + ", ".join(f"'{m}'" for m in LABEL_MODES)) from None
        if mode in modes:
            raise typer.BadParameter(f"'{part}' is named twice")
        modes.append(mode)
    if not modes:
        raise typer.BadParameter("no label kind given")
    return ",".join(modes)


def check_codecs(value: str | None) -> str | None:
    """``relabel --labels``: a comma-separated codec list, refused as a usage error when one is unknown."""
    if value is None:
        return None
    from nrrstore.errors import NrrError
    from nrrstore.format.codecs import parse_codecs

    try:
        return ",".join(c.name for c in parse_codecs(value))
    except NrrError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[-1]) from None


def parse_pair(text: str, option: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (low, high); a usage error naming ``option`` otherwise."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"{option} expects LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


def above_zero(value: float | None) -> float | None:
    """A Typer callback for an option that must be a finite number above 0 (a usage error naming it)."""
    if value is not None and not 0.0 < value < float("inf"):
        raise typer.BadParameter(f"must be a finite number above 0, got {value}")
    return value


def check_size(value: str | None) -> str | None:
    """A Typer callback for a size option (bytes, or e.g. 500MB, 20GiB): a usage error naming it."""
    from nrrstore.units import parse_bytes

    if value is not None:
        try:
            if parse_bytes(value) < 1:
                raise typer.BadParameter(f"must be at least 1 byte, got {value!r}")
        except NrrError as exc:
            raise typer.BadParameter(exc.problem) from None
    return value
