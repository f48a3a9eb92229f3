"""The GPU check behind benchmarks/gpu_check.sh: relabel and the loader on CUDA against the teacher's floor.

Self-contained: it writes its own small store (``--images`` real 224 px photo JPEGs, 6 classes,
see photos224.py) and uses a randomly initialised ResNet-18 teacher (throughput and bytes do not
depend on what the teacher knows). In one run, on ``--device``:

1. floor: the bare teacher forward over the views relabel feeds it (rendered beforehand);
2. relabel: ``relabel(..., device, amp, workers)`` end to end, views/s and its share of the floor
   (S3 on a GPU: >= 0.5);
3. determinism: a second relabel of a copy of the store; its distance files must equal the
   first's byte for byte;
4. loader: ``make_loader(..., device)`` for ``--epochs`` epochs (decode in workers, render on the
   device), views/s against the floor;
5. across devices: the same batch rendered on the CPU and on the device (max |difference|, and
   whether bit-identical), and the teacher's two distances from CPU vs device views and logits
   (the CE gap a student on one device sees against labels made on the other).

    bash benchmarks/gpu_check.sh                      # CUDA, 512 images, 2 epochs (a few minutes)
    python benchmarks/gpu_check.py --device cpu --images 16 --epochs 1 --size 64   # the logic, on a CPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos224 import photo_jpegs, write_store

from nrrstore.devices import amp_dtype, autocast, resolve_device
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import default_recipe, relabel
from nrrstore.models import load_teacher
from nrrstore.replay.stream import BatchAssembler, ViewStream, assemble
from nrrstore.train.loader import make_loader
from nrrstore.train.losses import distances

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def label_digest(store: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((store / "labels").rglob("*")):
        if p.is_file():
            h.update(p.relative_to(store).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def views_of(store: Path, teacher, epochs: int, batch: int, device: torch.device) -> list[dict]:
    st = Store(store)
    recipe = default_recipe(st, teacher)
    stream = ViewStream(st, recipe, batch, list(range(epochs)), list(range(epochs)), cache_mb=0)
    asm = BatchAssembler(recipe, 3, device, list(teacher.mean), list(teacher.std))
    return [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in assemble(stream.items(), asm)]


def run(args: argparse.Namespace) -> dict:
    dev = resolve_device(args.device)
    amp = amp_dtype(args.amp, dev)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    store = write_store(work / "store", photo_jpegs(args.images, size=args.size, classes=6), 6)
    torch.manual_seed(0)
    teacher = load_teacher(args.arch, dev, num_classes=6, image_size=args.size, normalization=IMAGENET)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    views = args.images * args.epochs
    out: dict = {"device": name, "arch": args.arch, "size": args.size, "images": args.images, "epochs": args.epochs,
                 "batch": args.batch_size, "amp": args.amp or "fp32", "workers": args.workers}
    print(f"device: {name}; {args.arch} at {args.size} px, {args.images} images x {args.epochs} epochs, batch "
          f"{args.batch_size}, amp {args.amp or 'fp32'}, workers {args.workers}", flush=True)

    # 1. the floor
    batches = views_of(store, teacher, args.epochs, args.batch_size, dev)
    with torch.inference_mode(), autocast(dev, amp):
        teacher.model(batches[0]["images"])  # warm-up (cudnn autotuning, lazy init)
        sync(dev)
        t0 = time.perf_counter()
        for b in batches:
            teacher.model(b["images"])
        sync(dev)
    floor = views / (time.perf_counter() - t0)
    out["floor_views_per_s"] = floor
    print(f"floor (bare teacher forward): {floor:9.1f} views/s", flush=True)

    # 2. relabel, 3. twice
    digests = []
    for k in range(2):
        target = store if k == 0 else work / "again"
        if k:
            shutil.copytree(work / "plain", target)
        else:
            shutil.copytree(store, work / "plain")
        t0 = time.perf_counter()
        relabel(target, teacher, args.epochs, batch_size=args.batch_size, device=dev, amp=args.amp,
                workers=args.workers)
        sync(dev)
        rate = views / (time.perf_counter() - t0)
        digests.append(label_digest(target))
        print(f"relabel run {k + 1}: {rate:9.1f} views/s = {rate / floor:.2f} of the floor (target >= 0.5 on a GPU)",
              flush=True)
        out.setdefault("relabel_views_per_s", []).append(rate)
    out["relabel_bytes_identical"] = digests[0] == digests[1]
    print(f"relabel twice on {dev.type}: distance files byte-identical: {'yes' if digests[0] == digests[1] else 'NO'}")

    # 4. the loader
    loader = make_loader(store, 0, args.batch_size, "dbr", workers=args.workers, device=dev, num_epochs=args.epochs,
                         cycle=True, cache_mb=0)  # decode every epoch, as a store larger than the cache does
    for _ in loader:  # warm-up pass over the first epoch's batches
        break
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b["y"])
    sync(dev)
    rate = n / (time.perf_counter() - t0)
    out["loader_views_per_s"] = rate
    print(f"loader on {dev.type}: {rate:9.1f} views/s = {rate / floor:.2f}x the teacher floor "
          f"({loader.decoded} decodes)", flush=True)

    # 5. across devices
    cpu = torch.device("cpu")
    on_cpu = views_of(store, load_teacher(args.arch, "cpu", num_classes=6, image_size=args.size,
                                          normalization=IMAGENET), 1, args.batch_size, cpu)[0]
    here = batches[0]
    diff = (on_cpu["images"] - here["images"].to(cpu)).abs().max().item()
    same = torch.equal(on_cpu["images"], here["images"].to(cpu))
    teacher_cpu = load_teacher(args.arch, "cpu", num_classes=6, image_size=args.size, normalization=IMAGENET)
    teacher_cpu.model.load_state_dict({k: v.to(cpu) for k, v in teacher.model.state_dict().items()})
    with torch.inference_mode():
        d_cpu = distances(teacher_cpu.model(on_cpu["images"]).float(), on_cpu["y"], on_cpu["y_partner"], on_cpu["lam"])
        with autocast(dev, amp):
            logits = teacher.model(here["images"])
        d_dev = distances(logits.float(), here["y"], here["y_partner"], here["lam"])
    gaps = [float((a.to(cpu) - b).abs().max()) for a, b in zip(d_dev, d_cpu, strict=True)]
    means = [float((a.to(cpu) - b).abs().mean()) for a, b in zip(d_dev, d_cpu, strict=True)]
    out.update(render_max_abs_diff=diff, render_bit_identical=same, ce_gap_max=gaps, ce_gap_mean=means)
    print(f"render cpu vs {dev.type}: max |diff| {diff:.3g} ({'bit-identical' if same else 'not bit-identical'})")
    print(f"CE gap cpu fp32 vs {dev.type} {args.amp or 'fp32'} (d_org, d_aug): max {gaps[0]:.3g}, {gaps[1]:.3g}; "
          f"mean {means[0]:.3g}, {means[1]:.3g} nats")
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--amp", default=None, help="bf16 or fp16 (default fp32)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "gpu_check"))
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
