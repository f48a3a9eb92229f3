"""Child process of `benchmarks/distill.py`: peak RSS of one distill (or one plain read) in a fresh process.

A fresh interpreter per measurement, because the RSS high-water mark never goes down: in a shared
process the first, largest run would hide every later one. The figure is the kernel's per-process
high-water mark ``VmHWM`` (/proc/self/status), reset after setup (``echo 5 > /proc/self/clear_refs``)
so that it covers the work alone. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that is the
maximum with the high-water mark of the address space the process was exec'd from, i.e. a child of
the benchmark process reports at least the parent's RSS (a 60 MB child of an 800 MB parent says 800).
``ru_maxrss`` is printed too, for reference. Prints one JSON line: ``setup_kb`` (RSS after imports
and loading the teacher), ``setup_peak_kb``, ``peak_kb`` (high-water mark during the work),
``ru_maxrss_kb`` and the run's summary.

    python benchmarks/_distill_mem.py '{"mode": "distill", "input": ..., "teacher": ..., "out": ..., ...}'
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux >= 4.0: VmHWM := current RSS


def _benchmark_module() -> Any:
    """benchmarks/distill.py, for its pass recorder (loaded by path: benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("p1_distill_benchmark", Path(__file__).with_name("distill.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> None:
    job: dict[str, Any] = json.loads(argv[1])
    import torch

    from nrrstore.distill.pipeline import distill, method_config
    from nrrstore.models import load_teacher
    from nrrstore.sources import iter_samples

    torch.set_num_threads(job["threads"])
    teacher = load_teacher(job["teacher"])
    bench = _benchmark_module()
    recorder = bench.PassRecorder(teacher)  # counts the images CIDD scores (a few bytes per forward)
    setup_peak = _status_kb("VmHWM")
    setup = _status_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    if job["mode"] == "read":
        # The reader distill streams through, over the whole input, keeping nothing.
        n = sum(1 for _ in iter_samples(job["input"], num_classes=teacher.num_classes))
        summary: dict[str, Any] = {"images_read": n}
    else:
        cfg = method_config(job["method"], job["ipc"], teacher.image_size,
                            cidd={"mipc": job["mipc"], "num_crop": job["num_crop"]},
                            nrr={"iterations": job["iterations"]})
        shutil.rmtree(job["out"], ignore_errors=True)
        summary = distill(job["input"], teacher, job["out"], cfg, overwrite=True).summary
        summary["scored"] = bench.scored_images(cfg, recorder.passes)
        shutil.rmtree(job["out"], ignore_errors=True)
    wall = time.perf_counter() - t0
    print(json.dumps({"setup_kb": setup, "setup_peak_kb": setup_peak, "peak_kb": _status_kb("VmHWM"),
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "wall_s": wall,
                      "summary": summary}))


if __name__ == "__main__":
    main(sys.argv)
