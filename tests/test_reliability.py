"""Reliability: every bad input refused with one clean line, nothing half-written, nothing lost.

The table of bad inputs is `tests._bad_inputs.CASES` (``python -m tests._bad_inputs`` prints the
counts recorded in README.md). This module runs it, plus what a table cannot express: a full disk,
a read-only output, two concurrent distills, a stale lock, and the converter and first-run checks.
"""

from __future__ import annotations

import pytest

from tests._bad_inputs import CASES, build_inputs, run_case
from tests._teacher import one_thread

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    with one_thread():
        return build_inputs(tmp_path_factory.mktemp("inputs"))


def test_the_table_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.id.split("-")[0] for c in CASES}
    assert commands >= {"idx", "if", "tt", "te", "d", "r", "ts", "ev", "in", "v", "c", "ir", "sr", "ex", "u"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_cleanly(case, inputs, tmp_path) -> None:
    out = run_case(case, inputs, tmp_path)
    assert not out.traceback, out.lines
    assert out.code == case.code, out.lines
    assert len(out.lines) == 1 and out.lines[0].startswith("nrrstore: "), out.lines
    assert out.missing_names == [], out.lines
    assert out.left == [], out.left
    assert out.lost == [], out.lost


# -- a full disk, a read-only output ------------------------------------------------------------------------
import builtins  # the helpers below need these imports, the table above does not
import contextlib
import errno
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from nrrstore.format.lock import lock_path, output_lock
from nrrstore.format.verify import verify_store
from nrrstore_cli.main import app
from tests._bad_inputs import copy, snapshot


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int, read_only: bool = False):
    """A small tmpfs at ``path`` where mounting is permitted (root), else None."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                      check=False).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


class FullDiskOpener:
    """``open`` whose files under ``root`` raise ENOSPC once ``budget`` bytes are written (all files together).

    The fallback where no tmpfs can be mounted: it reaches every write made through Python file
    objects (shards, checkpoints, PNGs, JSON), not pyarrow's own C++ writes.
    """

    def __init__(self, root: Path, budget: int, real=builtins.open) -> None:
        self.root, self.budget, self.used, self.real = str(root.resolve()), budget, 0, real

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") \
                and os.path.abspath(file).startswith(self.root):
            return _Limited(f, self)
        return f


class _Limited:
    def __init__(self, f, disk: FullDiskOpener) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        n = len(data)
        if self._disk.used + n > self._disk.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.used += n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


@contextlib.contextmanager
def full_disk(path: Path, monkeypatch, size_kb: int, budget: int, how: str):
    """A disk that fills up during the write: a real tmpfs (``how="tmpfs"``, skipped where it cannot be
    mounted) or the fault-injecting `FullDiskOpener` (``how="opener"``, everywhere)."""
    if how == "opener":
        path.mkdir()
        opener = FullDiskOpener(path, budget)
        monkeypatch.setattr(builtins, "open", opener)
        monkeypatch.setattr(io, "open", opener)
        yield
        return
    with tmpfs(path, size_kb) as mounted:
        if mounted is None:
            pytest.skip("no tmpfs can be mounted here (needs root); the opener variant covers this command")
        yield


FULL_DISK = [  # (id, command line with {out} on the small disk, tmpfs size in KB, opener budget in bytes)
    ("prepare", lambda e: ["prepare", "idx", e.idx_images, e.idx_labels, "--out", "{out}/o"], 16, 8000),
    ("distill", lambda e: ["distill", "--in", e.small_shards, "--teacher", e.teacher, "--ipc", 2, "--mipc", 3,
                           "--iterations", 1, "--relabel-epochs", 0, "--out", "{out}/s"], 8, 500),
    ("teacher-train", lambda e: ["teacher", "train", "--in", e.small_shards, "--width", 256, "--out", "{out}/t.pt"],
     256, 100_000),
    ("export", lambda e: ["export", e.store, "{out}/x"], 12, 4000),
    ("import-rded", lambda e: ["import", "rded", e.rded, "--out", "{out}/s"], 8, 4000),
    ("inspect-grid", lambda e: ["inspect", e.store, "--grid", "{out}/g.png"], 8, 4000),
    ("size-report-plot", lambda e: ["size-report", e.store, "--plot", "{out}/c.png"], 8, 4000),
    ("evaluate", lambda e: ["evaluate", e.store, "--val", e.shards, "--labels", "onehot", "--seeds", 1,
                            "--epochs", 1, "--batch-size", 2, "--work", "{out}/ev"], 64, 10_000),
    ("relabel", None, 64, 0),  # pyarrow writes: a real full disk only
    ("convert", lambda e: ["convert-softlabels", e.sre2l.labels, "--images", e.sre2l.images, "--out", "{out}/s"],
     24, 0),
]


@pytest.mark.parametrize("how", ["tmpfs", "opener"])
@pytest.mark.parametrize(("name", "command", "size_kb", "budget"), FULL_DISK, ids=[f[0] for f in FULL_DISK])
def test_full_disk_is_one_line_and_leaves_nothing(name, command, size_kb, budget, how, inputs, tmp_path,
                                                  monkeypatch) -> None:
    disk = tmp_path / "disk"
    if how == "opener" and name in ("relabel", "convert"):
        pytest.skip("its distances are written by pyarrow's own file code, which only a real full disk reaches")
    if name == "relabel":  # the store fits, its distances do not
        with full_disk(disk, monkeypatch, size_kb, budget, how):
            copy(inputs.plain, disk / "s")
            _fill(disk, leave=4096)
            before = snapshot(disk)
            # relabel refuses labels that cannot fit before any work (tests/test_workers.py); here the write
            # itself must fail cleanly, so that check is set aside
            monkeypatch.setattr("nrrstore.labels.relabel._check_disk", lambda *a: None)
            res = CliRunner().invoke(app, ["relabel", str(disk / "s"), "--teacher", str(inputs.teacher),
                                           "--epochs", "300", "--epochs-per-file", "1"])
            _assert_full(res, disk / "s", before, snapshot(disk))
        return
    with full_disk(disk, monkeypatch, size_kb, budget, how):
        args = [str(a).replace("{out}", str(disk)) for a in command(inputs)]
        out = Path(next(a for a in args if a.startswith(str(disk))))
        res = CliRunner().invoke(app, args)
        _assert_full(res, out, {}, snapshot(disk))


def _fill(disk: Path, leave: int) -> None:
    """Take all free space of ``disk`` but ``leave`` bytes."""
    free = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free))


def _assert_full(res, out: Path, before: dict, after: dict) -> None:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (TypeError, AttributeError, KeyError))
    lines = res.stderr.splitlines()  # the output, or the file inside it that could not be written
    assert len(lines) == 1 and lines[0].startswith(f"nrrstore: {out}") and lines[0].endswith(
        ": no space left on device"), res.stderr
    assert after == before, sorted(set(after) ^ set(before))  # no staging left to keep the disk full


def test_read_only_output_is_refused_before_any_work(inputs, tmp_path) -> None:
    ro = tmp_path / "ro"
    with tmpfs(ro, 256) as mounted:
        if mounted is None:
            if os.geteuid() == 0:
                pytest.skip("root ignores folder permissions and cannot mount here")
            ro.chmod(0o555)
        else:
            copy(inputs.plain, ro / "s")
            remount(ro, "ro")
        before = snapshot(ro)
        runs = [(["prepare", "idx", inputs.idx_images, inputs.idx_labels, "--out", ro / "o"], ro / "o"),
                (["teacher", "train", "--in", inputs.small_shards, "--out", ro / "t.pt"], ro / "t.pt"),
                (["distill", "--in", inputs.small_shards, "--teacher", inputs.teacher, "--ipc", 1, "--out", ro / "d"],
                 ro / "d")]
        if mounted is not None:
            runs.append((["relabel", ro / "s", "--teacher", inputs.teacher, "--epochs", 1], ro / "s"))
        for args, out in runs:
            res = CliRunner().invoke(app, [str(a) for a in args])
            assert res.exit_code == 1, res.output
            want = "read-only file system" if mounted is not None else "permission denied"
            assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"nrrstore: {out}: {want}"), res.stderr
        assert snapshot(ro) == before
        if mounted is None:
            ro.chmod(0o755)


# -- concurrent writers and stale locks -----------------------------------------------------------------------
def _distill_args(inputs, out: Path, iterations: int) -> list[str]:
    return ["distill", "--in", str(inputs.small_shards), "--teacher", str(inputs.teacher), "--ipc", "1", "--mipc", "3",
            "--iterations", str(iterations), "--relabel-epochs", "0", "--out", str(out)]


def test_two_concurrent_distills(inputs, tmp_path) -> None:
    out = tmp_path / "s"
    first = subprocess.Popen([sys.executable, "-m", "nrrstore_cli.main", *_distill_args(inputs, out, 10**6)],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lock = lock_path(out)
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first distill never took its lock"
            time.sleep(0.1)
        res = CliRunner().invoke(app, _distill_args(inputs, out, 2))
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.stderr == f"nrrstore: {out}: another nrrstore process (pid {first.pid}) is writing here\n"
        assert (tmp_path / ".work-s").is_dir()  # the second writer touched nothing of the first one's
    finally:
        first.kill()  # SIGKILL: its lock file stays, stale
        first.wait()
    assert lock.is_file()
    res = CliRunner().invoke(app, _distill_args(inputs, out, 2))  # takes the stale lock over
    assert res.exit_code == 0, res.output
    assert verify_store(out) == [] and not lock.exists() and not (tmp_path / ".work-s").exists()


def test_a_dead_process_lock_is_taken_over(tmp_path) -> None:
    target = tmp_path / "store"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=False)
    lock_path(target).write_text(dead.stdout)  # the file a killed writer leaves; nobody holds its lock
    with output_lock(target):
        assert lock_path(target).read_text().strip() == str(os.getpid())
        with output_lock(target):  # re-entrant: distill then relabel in one process
            pass
    assert not lock_path(target).exists()


# -- refused runs leave nothing, finished work is kept and says so ------------------------------------------
def test_a_failed_distill_keeps_finished_classes_and_says_how_to_resume(inputs, tmp_path) -> None:
    from nrrstore.distill.pipeline import distill, method_config
    from nrrstore.errors import NrrError
    from nrrstore.models import load_teacher

    teacher = load_teacher(inputs.teacher)
    # NRR refines classes in groups (BN statistics over several classes): groups of 2 end at class 1.
    cfg = method_config("nrr", 1, 28, cidd={"mipc": 3}, nrr={"iterations": 1}, classes_per_pass=2)
    out = tmp_path / "s"

    def disk_on_fire(c: int) -> None:
        if c == 1:
            raise NrrError(out, "disk on fire")

    with pytest.raises(NrrError) as err:
        distill(inputs.small_shards, teacher, out, cfg, after_class=disk_on_fire)
    work = tmp_path / ".work-s"
    assert err.value.problem == (f"disk on fire; 2 of 10 classes are finished and kept in {work}: rerun the same "
                                 f"command to resume them, or delete {work} to discard them")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".work-s"]  # no store, no lock, no staging
    result = distill(inputs.small_shards, teacher, out, cfg)
    assert result.summary["classes_done_before"] == 2 and verify_store(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# -- converters check what they cannot see ---------------------------------------------------------------------
def test_convert_with_the_right_teacher_passes_the_replay_check(inputs, tmp_path) -> None:
    import json

    res = CliRunner().invoke(app, ["convert-softlabels", str(inputs.sre2l.labels), "--images", str(inputs.sre2l.images),
                                   "--out", str(tmp_path / "s"), "--teacher", str(inputs.teacher), "--json"])
    assert res.exit_code == 0, res.output
    replay = json.loads(res.stdout)["replay"]
    assert replay["problem"] is None and replay["mean_gap"] < 0.01 and replay["views"] == 40


def test_convert_epochs_of_a_partly_written_folder(inputs, tmp_path) -> None:
    from nrrstore.format.reader import Store

    copy(inputs.sre2l.labels, tmp_path / "labels")
    (tmp_path / "labels/epoch_1/batch_2.tar").unlink()  # SRe2L still writing epoch 1
    res = CliRunner().invoke(app, ["convert-softlabels", str(tmp_path / "labels"), "--images", str(inputs.sre2l.images),
                                   "--out", str(tmp_path / "s"), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert Store(tmp_path / "s").num_epochs == 1 and verify_store(tmp_path / "s") == []


def _rded_rgb(root: Path, classes: list[int]) -> Path:
    """RDED's output for grey data: RGB JPEGs."""
    from PIL import Image

    from tests._real import fmnist

    for _, img, label in fmnist("train", 1):
        if label in classes:
            (root / f"{label:05d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).convert("RGB").save(root / f"{label:05d}" / f"class{label:05d}_id00000.jpg")
    return root


def test_import_rded_takes_the_teachers_channels(inputs, tmp_path) -> None:
    from nrrstore.format.reader import Store

    syn = _rded_rgb(tmp_path / "syn", list(range(10)))
    res = CliRunner().invoke(app, ["import", "rded", str(syn), "--out", str(tmp_path / "s"), "--teacher",
                                   str(inputs.teacher), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    m = Store(tmp_path / "s").manifest
    assert m.image.channels == 1 and m.method["import"]["image_mode"] == "L" and m.labels["distances"]["epochs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "syn"]


def test_a_failed_relabel_leaves_no_unlabelled_rded_store(inputs, tmp_path) -> None:
    from nrrstore.convert.rded import import_rded
    from nrrstore.errors import NrrError
    from nrrstore.models import load_teacher

    syn = _rded_rgb(tmp_path / "syn", list(range(10)))
    with pytest.raises(NrrError, match="precision"):
        import_rded(syn, tmp_path / "s", teacher=load_teacher(inputs.teacher), epochs=1,
                    relabel_options={"precision": "fp8"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_a_partial_rded_tree_needs_every_class_name(tmp_path) -> None:
    from nrrstore.format.reader import Store

    syn = _rded_rgb(tmp_path / "syn", [0, 2])
    (tmp_path / "names.txt").write_text("shirt\ntrouser\npullover\n")
    res = CliRunner().invoke(app, ["import", "rded", str(syn), "--out", str(tmp_path / "s"), "--classes",
                                   str(tmp_path / "names.txt")])
    assert res.exit_code == 0, res.output
    assert Store(tmp_path / "s").manifest.per_class == [1, 0, 1]


def test_mipc_beyond_a_class_is_recorded_as_used(inputs, tmp_path) -> None:
    from nrrstore.format.reader import Store

    res = CliRunner().invoke(app, ["distill", "--in", str(inputs.small_shards), "--teacher", str(inputs.teacher),
                                   "--ipc", "1", "--mipc", "10", "--iterations", "1", "--relabel-epochs", "0",
                                   "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    method = Store(tmp_path / "s").manifest.method
    assert method["cidd"]["mipc"] == 10 and method["sources_used"] == [4] * 10


def test_error_texts_are_never_cut() -> None:
    from nrrstore.models.checkpoint import _short_reason

    long = "Weights only load failed because " + "a very long reason " * 20
    assert _short_reason(ValueError(long)) == long.strip()


def test_a_memory_cap_is_one_line(tmp_path) -> None:
    """Start-up under an address-space limit too small to load numpy and pyarrow: one line, exit 1, no traceback
    (numpy's BLAS would otherwise abort with its own message, or an import fail with a traceback); and the
    failures memory exhaustion causes later are named as such, not as internal errors."""
    import resource

    from nrrstore_cli._common import out_of_memory

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (200 * 2**20, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "nrrstore_cli.main", "inspect", str(tmp_path)], preexec_fn=cap,
                          capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("nrrstore: the memory limit (ulimit -v) is 200 MiB")
    assert out_of_memory(MemoryError()) == "out of memory"
    assert "libtorch_cpu.so" in str(out_of_memory(ImportError("libtorch_cpu.so: failed to map segment from shared object")))
    assert "200,704,000 bytes" in str(out_of_memory(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 200704000 bytes. Error code 12 (Cannot allocate memory)")))
    assert out_of_memory(RuntimeError("shape mismatch")) is None


def test_out_of_memory_names_the_commands_own_size_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Memory running out inside a command names the size options that command has, with the values it ran with
    (issue 31: a line that blamed --batch-size/--workers for what --epochs caused, or options a command lacks)."""
    from nrrstore_cli._common import handle_errors

    @handle_errors
    def student(store: str, batch_size: int = 256, workers: int | None = None, cache_size: str | None = None) -> None:
        raise MemoryError

    @handle_errors
    def inspect(store: str) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes")

    for run in (lambda: student(store="s", batch_size=512, workers=None, cache_size="2G"), lambda: inspect(store="s")):
        with pytest.raises(SystemExit) as stop:
            run()
        assert stop.value.code == 1
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first == ("nrrstore: out of memory; raise the memory limit (ulimit -v, or the container's) or lower "
                     "--batch-size (was 512), --workers, --cache-size (was 2G)")
    assert second == ("nrrstore: out of memory (an allocation of 4,096 bytes failed); raise the memory limit "
                      "(ulimit -v, or the container's)")
