"""Teacher/student training speed at one resolution: which fast mode wins on this machine.

Prints images/s of forward+backward+SGD step for each (architecture, mode), all measured in one run,
with the plain fp32 contiguous mode as the baseline every other mode is compared against.
Modes: fp32 (baseline), channels_last, bf16 autocast, torch.compile, compile+channels_last.

    python benchmarks/train_speed.py --size 128 --archs resnet18,convnet5 --batch 64 --steps 6
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from nrrstore.models.registry import build_model


def measure(arch: str, mode: str, size: int, batch: int, steps: int, arch_kwargs: dict) -> float:
    model = build_model(arch, 10, 3, size, seed=0, **arch_kwargs)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    if "cl" in mode:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = torch.compile(model) if "compile" in mode else model
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in mode):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--archs", default="resnet18,convnet5")
    p.add_argument("--modes", default="fp32,cl,bf16,compile,compile-cl")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for arch in a.archs.split(","):
        kw = {"norm": "batch"} if arch.startswith("convnet") else {}
        base = None
        for mode in a.modes.split(","):
            ips = measure(arch, mode, a.size, a.batch, a.steps, kw)
            base = base or ips
            rows.append({"arch": arch, "mode": mode, "images_per_s": round(ips, 2), "vs_fp32": round(ips / base, 3)})
            print(f"{arch:10s} {mode:12s} {ips:8.2f} img/s  x{ips / base:.2f} of fp32", flush=True)
    if a.json:
        print(json.dumps({"size": a.size, "batch": a.batch, "threads": a.threads, "torch": torch.__version__,
                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
