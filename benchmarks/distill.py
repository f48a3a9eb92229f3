"""P1: `nrrstore distill` wall time / the pure teacher compute of the same passes, plus peak memory.

Wall side: `nrrstore.distill.pipeline.distill` on real Fashion-MNIST shards with the shipped
ConvNet-3 teacher, everything included (reading and decoding shards, crops, CAM ratios, selection,
stitching, NRR, work files, assembling the store).

Pure side: exactly the teacher passes that distill ran, replayed on ``torch.randn`` inputs of the
same shapes, in the same order and batch sizes, with the same teacher and grad settings:

* ``cam``      CIDD's CAM forward per real image and NRR's CAM forward per refine batch
               (``CamModel.forward_with_cam``, no grad);
* ``fwd``      CIDD's scoring forward per kept patch (zero-padded to full size) and NRR's final
               forward (no grad);
* ``fwd+bwd``  one NRR step: forward, cross-entropy, gradient w.r.t. the input.

The passes are not guessed: forward hooks on the teacher's linear head record every forward that
distill makes (batch size, grad mode, CAM or plain, CIDD or NRR; a few microseconds each, paid by
the distill side), and the record is checked against the passes the configuration implies (CIDD:
``classes * mipc`` images scored when the run stopped early, in batches of ``cidd.batch_size``, one
CAM and one scoring forward each in "cam" mode, ``num_crop`` scoring forwards in "score" mode;
NRR: per class ``ceil(ipc / nrr_batch_size)`` batches of 1 CAM + ``iterations`` fwd+bwd + 1 final
forward). ``distill()`` does not relabel (DBR distances are `relabel`, which the CLI runs only with
``--relabel-epochs``), so there are no relabel passes to count.

Two measurements, both in one process after a tiny warm-up distill (lazy imports, first kernels):

* separate (what P1 asks): a whole distill, then the pure replay of its passes, ``--repeat``
  times; the minimum of each side is reported;
* paired: distill again with every pass replayed right after distill made it, the replay's time
  taken out of distill's. Both sides then see the same load on the machine (they alternate every
  few milliseconds), which matters here: other jobs share the 2 cores, and the minimum of a few
  separate runs still moves by +-15% from one invocation to the next.

Threads: ``--threads`` (default 1) is set for both sides and the memory children. On this shared
2-core machine 2 intra-op threads make every op wait for a core another job holds: measured 3-5x
slower than 1 thread and 3x noisier, which would measure the neighbours, not distill.

Peak memory: the same distill in a fresh subprocess (`benchmarks/_distill_mem.py`) per input, the
first shard (10k images) and the whole training set (60k images), with the same mipc, reported as
the kernel's RSS high-water mark (VmHWM, reset after imports and teacher loading; see that file for
why not ``ru_maxrss``), ``--mem-repeat`` processes each (identical runs differ by 10-30 MB: the
allocator, not the input). With a fixed mipc both runs stop reading once every class has mipc images,
so the 60k run reads exactly what the 10k run reads: the streaming design, and the figure shows
that the size of the input costs nothing. To show that reading further does not accumulate memory
either, the children also stream *every* image of each input through the reader distill uses
(`iter_samples`), keeping nothing. ``--mem-exhaust MIPC`` adds distill runs with a mipc of at least
the class size (e.g. 6000), which read and score every image of each input (slow: 2 teacher
forwards per image, ~5 min for 60k): there what distill keeps (one patch and one candidate record
per scored image, bounded by ``classes * mipc`` by design) grows with the images scored.

    python benchmarks/distill.py                    # ipc 10, mipc 300, 20 NRR steps; ~5-6 min here
    python benchmarks/distill.py --no-mem --repeat 5 --paired 3
    python benchmarks/distill.py --no-timing --mem-exhaust 6000
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nrrstore.distill.pipeline import DistillConfig, distill, method_config
from nrrstore.models import CamModel, Teacher, load_teacher
from nrrstore.sources import resolve_shards

WORK = ROOT / "benchmarks" / "_work" / "distill"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_INPUT = Path("/work/fm/train")
DEFAULT_TEACHER = ROOT / "data" / "teachers" / "convnet3-fmnist.pt"
STAGES = ("cidd", "nrr")


# ------------------------------------------------------------------------------------------------
# Input shards.


def ensure_input(path: Path) -> Path:
    """The full Fashion-MNIST training shards (6 x 10k); made with `prepare_idx` into WORK if absent."""
    if path.exists():
        return path
    if path != DEFAULT_INPUT:
        sys.exit(f"{path}: no such input")
    made = WORK / "fm-train"
    if (made / "shards.json").is_file():
        return made
    images, labels = DEBIAN / "train-images-idx3-ubyte.gz", DEBIAN / "train-labels-idx1-ubyte.gz"
    if not images.is_file():
        sys.exit(f"{path} is missing and so is {images} (apt-get install dataset-fashion-mnist)")
    from nrrstore.sources import prepare_idx

    names = (ROOT / "data" / "fashion-mnist" / "train" / "classes.txt").read_text().split("\n")
    print(f"preparing {made} from {DEBIAN} ...", flush=True)
    prepare_idx(images, labels, made, class_names=[n for n in names if n], shard_size=10000, prefix="train",
                overwrite=True)
    return made


# ------------------------------------------------------------------------------------------------
# Recording the passes distill makes.


@dataclass(frozen=True)
class Pass:
    stage: str  # "cidd" or "nrr"
    kind: str  # "cam", "fwd" or "fwd+bwd"
    batch: int


class PassRecorder:
    """Forward hooks on the teacher: every forward reaches the linear head, plain ones via `model(x)`.

    A head call outside a `model(x)` call is a CAM forward (CamModel runs features + head itself);
    a grad-enabled plain forward is an NRR step (its backward follows). The stage is read from the
    call stack (`refine` = NRR, anything else = CIDD). Costs a few microseconds per forward.

    With `replay` set, each recorded pass is also replayed on random tensors right away and its
    time added to `injected` (per stage): the paired measurement, where both sides see the same
    load on the machine because they alternate every few milliseconds.
    """

    def __init__(self, teacher: Teacher) -> None:
        model = teacher.model
        head = getattr(model, "classifier", None) or getattr(model, "fc", None)
        if not isinstance(head, nn.Module):
            raise SystemExit(f"{type(model).__name__}: no classifier/fc head to hook")
        self.passes: list[Pass] = []
        self.replay: PureCompute | None = None
        self.injected = dict.fromkeys(STAGES, 0.0)
        self._depth = 0
        self._busy = False
        self._handles = [
            model.register_forward_pre_hook(self._enter),
            model.register_forward_hook(self._leave),
            head.register_forward_hook(self._head),
        ]

    def reset(self, replay: PureCompute | None = None) -> None:
        self.passes.clear()
        self.replay = replay
        self.injected = dict.fromkeys(STAGES, 0.0)

    def _enter(self, *_: Any) -> None:
        self._depth += 1

    def _leave(self, *_: Any) -> None:
        self._depth -= 1

    def _head(self, _m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        if self._busy:  # a replayed pass
            return
        kind = "cam" if self._depth == 0 else ("fwd+bwd" if torch.is_grad_enabled() else "fwd")
        frame: FrameType | None = sys._getframe(1)
        stage = "cidd"
        while frame is not None:
            if frame.f_code.co_name == "refine":
                stage = "nrr"
                break
            frame = frame.f_back
        p = Pass(stage, kind, int(inputs[0].shape[0]))
        self.passes.append(p)
        if self.replay is not None:
            self.replay.prepare(p.batch)
            self._busy = True
            t0 = time.perf_counter()
            try:
                self.replay.run_pass(p)
            finally:
                self._busy = False
            self.injected[stage] += time.perf_counter() - t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def scored_images(cfg: DistillConfig, passes: list[Pass]) -> int:
    """Real images CIDD scored: one CAM forward each, else num_crop scoring forwards each."""
    if cfg.cidd.uses_cam:
        return sum(p.batch for p in passes if p.stage == "cidd" and p.kind == "cam")
    return sum(p.batch for p in passes if p.stage == "cidd" and p.kind == "fwd") // cfg.cidd.num_crop


def expected_passes(cfg: DistillConfig, num_classes: int, scored: int) -> Counter[Pass]:
    """The passes distill must make for `scored` real images (all classes, one pass over the input)."""
    c, n = cfg.cidd, cfg.nrr
    want: Counter[Pass] = Counter()
    sizes = [c.batch_size] * (scored // c.batch_size) + ([scored % c.batch_size] if scored % c.batch_size else [])
    for b in sizes:  # each flush: one CAM chunk and one scoring chunk (batch == cidd.batch_size)
        if c.uses_cam:
            want[Pass("cidd", "cam", b)] += 1
        if c.per_image == "cam":
            want[Pass("cidd", "fwd", b)] += 1
        else:
            k = b * c.num_crop
            for s in range(0, k, c.batch_size):
                want[Pass("cidd", "fwd", min(c.batch_size, k - s))] += 1
    if n.refine:
        for _ in range(num_classes):
            for s in range(0, c.ipc, cfg.nrr_batch_size):
                b = min(cfg.nrr_batch_size, c.ipc - s)
                want[Pass("nrr", "cam", b)] += 1
                want[Pass("nrr", "fwd+bwd", b)] += n.iterations
                want[Pass("nrr", "fwd", b)] += 1
    return want


# ------------------------------------------------------------------------------------------------
# The pure side.


class PureCompute:
    """Replays recorded passes on random tensors; inputs are made once, outside the timed loop."""

    def __init__(self, teacher: Teacher, passes: list[Pass], seed: int = 0) -> None:
        self.teacher = teacher
        self.passes = passes
        self.cam_model = CamModel(teacher.model)
        self._gen = torch.Generator().manual_seed(seed)
        self.inputs: dict[int, tuple[Tensor, Tensor]] = {}
        for p in passes:
            self.prepare(p.batch)

    def prepare(self, batch: int) -> None:
        if batch not in self.inputs:
            t = self.teacher
            x = torch.randn((batch, t.in_channels, t.image_size, t.image_size), generator=self._gen)
            self.inputs[batch] = (x, torch.randint(0, t.num_classes, (batch,), generator=self._gen))

    def run_pass(self, p: Pass) -> None:
        x, y = self.inputs[p.batch]
        model = self.teacher.model
        if p.kind == "cam":
            with torch.no_grad():
                self.cam_model.forward_with_cam(x, y)
        elif p.kind == "fwd":
            with torch.no_grad():
                model(x)
        else:
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xg), y) * p.batch
                torch.autograd.grad(loss, xg)

    def run(self) -> dict[str, float]:
        """Wall seconds per stage, their total, and the process CPU seconds of it all."""
        out = dict.fromkeys(STAGES, 0.0)
        c0 = time.process_time()
        for stage in STAGES:
            todo = [p for p in self.passes if p.stage == stage]
            if not todo:
                continue
            t0 = time.perf_counter()
            for p in todo:
                self.run_pass(p)
            out[stage] = time.perf_counter() - t0
        out["total"] = sum(out[s] for s in STAGES)
        out["cpu"] = time.process_time() - c0
        return out


# ------------------------------------------------------------------------------------------------
# The wall side.


def run_distill(inputs: str, teacher: Teacher, cfg: DistillConfig, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = distill(inputs, teacher, out, cfg, overwrite=True).summary
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if summary.get("resumed"):
        raise SystemExit(f"{out}: distill resumed a finished store; nothing was timed")
    shutil.rmtree(out, ignore_errors=True)
    return {"cidd": summary["cidd_s"], "nrr": summary["nrr_s"], "assemble": summary["assemble_s"],
            "total": wall, "cpu": cpu, "images_read": summary["images_read"]}


def warm_up(teacher: Teacher, inputs: str, cfg: DistillConfig) -> float:
    """One-time costs (lazy imports, allocator, kernels, CAM head check) out of both sides' first run:
    a tiny distill (ipc 1, mipc 1, 1 NRR step) and one pass of each kind. Returns its seconds."""
    t0 = time.perf_counter()
    tiny = replace(cfg, cidd=replace(cfg.cidd, ipc=1, mipc=1), nrr=replace(cfg.nrr, iterations=1))
    run_distill(inputs, teacher, tiny, WORK / "warm-up")
    x = torch.randn(8, teacher.in_channels, teacher.image_size, teacher.image_size)
    y = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        teacher.model(x)
        CamModel(teacher.model).forward_with_cam(x, y)
    xg = x.requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(teacher.model(xg), y), xg)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Memory (subprocesses).


def child(job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_distill_mem.py"), json.dumps(job)],
                         check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"memory child failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory_rows(args: argparse.Namespace, inputs: list[tuple[str, str, int]]) -> list[list[str]]:
    rows = []
    base = {"teacher": str(args.teacher), "threads": args.threads, "method": args.method, "ipc": args.ipc,
            "num_crop": args.num_crop, "iterations": args.mem_iterations, "out": str(WORK / "mem-store")}
    plans: list[tuple[str, dict[str, Any]]] = [(f"distill, mipc {args.mipc}", {"mode": "distill", "mipc": args.mipc})]
    if args.mem_exhaust:
        plans.append((f"distill, mipc {args.mem_exhaust}", {"mode": "distill", "mipc": args.mem_exhaust}))
    plans.append(("reader only, full pass", {"mode": "read"}))
    def mb(values: list[float]) -> str:
        lo, hi = min(values) / 1024, max(values) / 1024
        return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"

    for label, extra in plans:
        for name, spec, count in inputs:
            runs = [child({**base, **extra, "input": spec}) for _ in range(max(1, args.mem_repeat))]
            summaries = {(r["summary"]["images_read"], r["summary"].get("scored")) for r in runs}
            if len(summaries) != 1:
                raise SystemExit(f"memory runs of {spec} read/scored different counts: {summaries}")
            read, scored = summaries.pop()
            rows.append([label, f"{name} ({count})", str(read), "-" if scored is None else str(scored),
                         mb([r["setup_kb"] for r in runs]), mb([r["peak_kb"] for r in runs]),
                         mb([r["peak_kb"] - r["setup_kb"] for r in runs]), mb([r["ru_maxrss_kb"] for r in runs]),
                         f"{min(r['wall_s'] for r in runs):.1f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="the 60k training shards (default %(default)s)")
    ap.add_argument("--input-small", default=None,
                    help="the 10k input for the memory comparison (default: the first shard of --input)")
    ap.add_argument("--timed-input", choices=("small", "full"), default="small",
                    help="which input the timed runs read (they stop after mipc per class either way)")
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--method", choices=("nrr", "rded"), default="nrr")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--mipc", type=int, default=300, help="real images scored per class")
    ap.add_argument("--num-crop", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="NRR steps (forward+backward) per image")
    ap.add_argument("--repeat", type=int, default=3,
                    help="separate runs (distill, then the pure replay); the minimum per side is reported")
    ap.add_argument("--paired", type=int, default=2,
                    help="paired runs (each pass replayed right after distill makes it); 0 to skip")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads, both sides and the children (see the module doc)")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--no-timing", action="store_true", help="skip the timed runs (memory only)")
    ap.add_argument("--mem-iterations", type=int, default=1,
                    help="NRR steps in the memory runs (memory does not depend on it; keeps them short)")
    ap.add_argument("--mem-repeat", type=int, default=2,
                    help="fresh processes per memory figure; the range is printed (the peak moves by ~10-30 MB "
                         "between identical runs: allocator)")
    ap.add_argument("--mem-exhaust", type=int, default=0, metavar="MIPC",
                    help="also run memory distills with this mipc (>= class size reads every image; slow)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    full = ensure_input(args.input)
    urls = resolve_shards(full)
    small = args.input_small or urls[0]
    teacher = load_teacher(args.teacher)
    cfg = method_config(args.method, args.ipc, teacher.image_size,
                        cidd={"mipc": args.mipc, "num_crop": args.num_crop}, nrr={"iterations": args.iterations})
    timed_input = small if args.timed_input == "small" else os.fspath(full)
    sizes = _input_sizes(full, urls, small)
    counts = {"small": sizes[0], "full": sizes[1]}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; teacher "
          f"{teacher.arch} {teacher.image_size}px; method {args.method}, ipc {args.ipc}, mipc {args.mipc}, "
          f"num_crop {args.num_crop}, NRR iterations {args.iterations}, cidd batch {cfg.cidd.batch_size}, "
          f"nrr batch {cfg.nrr_batch_size}; timed input {timed_input}", flush=True)

    WORK.mkdir(parents=True, exist_ok=True)
    if not args.no_timing:
        timing(args, teacher, cfg, timed_input, counts[args.timed_input])
    if not args.no_mem:
        print(f"\npeak memory, {args.mem_repeat} fresh processes per row, min-max (VmHWM reset after setup; NRR "
              f"iterations {args.mem_iterations}; ru_maxrss includes this parent's RSS, see _distill_mem.py):",
              flush=True)
        inputs = [("first shard", small, counts["small"]), ("all shards", os.fspath(full), counts["full"])]
        rows = memory_rows(args, inputs)
        print(table(["run", "input (images)", "images read", "scored", "RSS after setup MB", "peak RSS MB",
                     "growth MB", "ru_maxrss MB", "min wall s"], rows))


def timing(args: argparse.Namespace, teacher: Teacher, cfg: DistillConfig, timed_input: str, available: int) -> None:
    """The separate and the paired runs, and the P1 table."""
    print(f"warm-up (tiny distill + one pass of each kind, not counted): {warm_up(teacher, timed_input, cfg):.1f} s",
          flush=True)
    recorder = PassRecorder(teacher)
    pure: PureCompute | None = None
    sep_w: list[dict[str, Any]] = []
    sep_p: list[dict[str, float]] = []
    for r in range(args.repeat):
        recorder.reset()
        w = run_distill(timed_input, teacher, cfg, WORK / "store")
        if pure is None:
            _check_passes(cfg, teacher.num_classes, recorder.passes, w["images_read"], available)
            pure = PureCompute(teacher, list(recorder.passes))
        elif recorder.passes != pure.passes:
            raise SystemExit("distill made different passes from one run to the next")
        gc.collect()
        p = pure.run()
        sep_w.append(w)
        sep_p.append(p)
        print(f"separate run {r + 1}: distill {w['total']:.2f} s (CIDD {w['cidd']:.2f}, NRR {w['nrr']:.2f}, "
              f"assemble {w['assemble']:.2f}; CPU {w['cpu']:.2f}), then pure {p['total']:.2f} s (CIDD "
              f"{p['cidd']:.2f}, NRR {p['nrr']:.2f}; CPU {p['cpu']:.2f}): ratio {w['total'] / p['total']:.3f}",
              flush=True)
    assert pure is not None
    par_w: list[dict[str, Any]] = []
    par_p: list[dict[str, float]] = []
    for r in range(args.paired):
        recorder.reset(replay=pure)
        w = run_distill(timed_input, teacher, cfg, WORK / "store")
        inj = recorder.injected
        if recorder.passes != pure.passes:
            raise SystemExit("distill made different passes from one run to the next")
        w = {**w, "cidd": w["cidd"] - inj["cidd"], "nrr": w["nrr"] - inj["nrr"], "total": w["total"] - sum(inj.values())}
        p = {**inj, "total": sum(inj.values())}
        par_w.append(w)
        par_p.append(p)
        print(f"paired run {r + 1}: distill {w['total']:.2f} s (CIDD {w['cidd']:.2f}, NRR {w['nrr']:.2f}), "
              f"pure {p['total']:.2f} s (CIDD {p['cidd']:.2f}, NRR {p['nrr']:.2f}): ratio "
              f"{w['total'] / p['total']:.3f}", flush=True)
    recorder.remove()

    def best(runs: list[dict[str, Any]], key: str) -> float:
        return min(run[key] for run in runs) if runs else math.nan

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b and not math.isnan(a) else "-"

    kinds = Counter((p.stage, p.kind) for p in pure.passes)
    imgs: Counter[tuple[str, str]] = Counter()
    for ps in pure.passes:
        imgs[(ps.stage, ps.kind)] += ps.batch
    desc = {s: ", ".join(f"{kinds[(s, k)]} {k} ({imgs[(s, k)]} img)" for k in ("cam", "fwd", "fwd+bwd") if kinds[(s, k)])
            or "no teacher passes" for s in STAGES}
    read_note = f"images read {sep_w[0]['images_read']}, scored {scored_images(cfg, pure.passes)}"
    for run in (*sep_w, *par_w):
        run["other"] = run["total"] - run["cidd"] - run["nrr"] - run["assemble"]
    rows = []
    for key, name, note in (("cidd", "CIDD", desc["cidd"]), ("nrr", "NRR", desc["nrr"]),
                            ("assemble", "assemble", "store writing, no teacher"),
                            ("other", "other", "setup outside the stages"),
                            ("total", "total", read_note)):
        teacher_side = key in STAGES or key == "total"
        sw, pw = best(sep_w, key), best(par_w, key)
        sp = best(sep_p, key) if teacher_side else 0.0
        pp = best(par_p, key) if teacher_side and par_p else 0.0
        rows.append([name, f"{sw:.2f}", f"{sp:.2f}", ratio(sw, sp) if teacher_side else "-",
                     f"{pw:.2f}", f"{pp:.2f}", ratio(pw, pp) if teacher_side else "-", note])
    print(f"\nP1: distill wall / pure teacher compute of the same passes (min of {args.repeat} separate runs per "
          f"side: distill, then the pure replay; min of {args.paired} paired runs: each pass replayed right after "
          f"distill made it, replay time taken out of distill's)")
    print(table(["stage", "distill s", "pure s", "ratio", "paired distill s", "paired pure s", "paired ratio",
                 "passes"], rows))
    r_sep = best(sep_w, "total") / best(sep_p, "total")
    r_par = best(par_w, "total") / best(par_p, "total") if par_w else math.nan
    print(f"overall (separate): {r_sep:.3f}  target <= 1.25: {'MET' if r_sep <= 1.25 else 'MISSED'}")
    if par_w:
        print(f"overall (paired):   {r_par:.3f}  target <= 1.25: {'MET' if r_par <= 1.25 else 'MISSED'}")
    print(f"process CPU time, separate runs: distill {best(sep_w, 'cpu'):.2f} s / pure {best(sep_p, 'cpu'):.2f} s "
          f"= {ratio(best(sep_w, 'cpu'), best(sep_p, 'cpu'))}", flush=True)


def _input_sizes(full: Path, urls: list[str], small: str) -> tuple[int, int]:
    """Images in the small and the full input, from shards.json when present, else by counting."""
    meta = full / "shards.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        per = {str(Path(full) / s["name"]): s["count"] for s in info["shards"]}
        small_urls = resolve_shards(small)
        if all(u in per for u in small_urls):
            return sum(per[u] for u in small_urls), info["count"]
    from nrrstore.format.tario import iter_tar_samples

    def count(spec: Any) -> int:
        return sum(1 for u in resolve_shards(spec) for _ in iter_tar_samples(u))

    return count(small), count(urls)


def _check_passes(cfg: DistillConfig, num_classes: int, passes: list[Pass], read: int, available: int) -> None:
    got = Counter(passes)
    scored = scored_images(cfg, passes)
    if read < available and scored != num_classes * cfg.cidd.mipc:
        raise SystemExit(f"stopped early after {read} images but scored {scored}, not classes * mipc")
    want = expected_passes(cfg, num_classes, scored)
    if got != want:
        diff = {str(k): (got[k], want[k]) for k in set(got) | set(want) if got[k] != want[k]}
        raise SystemExit(f"distill made other passes than the config implies (recorded, expected): {diff}")


if __name__ == "__main__":
    main()
