"""S1: batched view rendering (recipe version 2) vs the per-view renderer (version 1), 224 px, CPU.

Both render the same loader batch the way the training loader does: every view of the batch
and of its CutMix partners (RandomResizedCrop + flip), mixed, normalized (ImageNet statistics),
from the same decoded images (real 224 px photo JPEGs, see photos224.py):
- old: ``render_batch_v1`` (a Python loop: one ``F.interpolate`` and one CutMix clone per view)
  then the loader's per-channel normalization;
- new: `Renderer.render` + `Renderer.mix` (taps on the host, two embedding_bag passes, lerp),
  from x-major uint8 images as the loader's workers send them, into a batch tensor from the
  loader's `OutputPool` (reused once the previous batch is dropped, as in a training loop);
- new, fresh: the same into a freshly allocated batch tensor, as old does (on this VM a fresh
  60 MB tensor costs ~0.3 ms/view in page faults, whoever renders into it).
Timed alternately, ``--repeat`` times each after a warm-up, on one torch thread; prints the
min and the median of each, and the ratios. Target: new >= 5x old.

    python benchmarks/render.py                 # batch 100 of 128 images, 9 repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos224 import photo_jpegs

from nrrstore.format.images import decode_image
from nrrstore.replay.recipe import AugRecipe, epoch_plan, view_params_batch
from nrrstore.replay.render import Renderer, to_xmajor, view_taps
from nrrstore.replay.render_v1 import render_batch_v1
from nrrstore.replay.stream import OutputPool

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hwc = [decode_image(data) for data, _ in photo_jpegs(args.images, size=args.size)]
    chw = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in hwc]
    recipe_v1 = AugRecipe(size=args.size, seed=0, version=1)
    recipe = AugRecipe(size=args.size, seed=0)
    plan = epoch_plan(recipe, 0, args.images)
    idx = plan.order[:args.batch]
    partner = plan.partner[idx]
    need = np.unique(np.concatenate([idx, partner]))
    print(f"{args.batch} views of {args.size} px (+{len(need) - args.batch} partner views), real photo JPEGs, "
          f"torch threads {torch.get_num_threads()}")

    def old() -> torch.Tensor:
        views = render_batch_v1(chw, idx, plan, recipe_v1, 0)[0]
        for c, (m, s) in enumerate(zip(MEAN, STD, strict=True)):
            views[:, c].sub_(m).div_(s)
        return views

    pixels = torch.from_numpy(np.stack([to_xmajor(hwc[i]) for i in need]))  # what a worker sends
    renderer = Renderer(args.size, 3, "cpu", MEAN, STD)
    workspace = torch.empty(len(need) * 3 * args.size ** 2)

    pool = OutputPool(torch.device("cpu"))

    def new(fresh: bool = False) -> torch.Tensor:
        views = view_params_batch(recipe, 0, need, args.size, args.size)
        taps = view_taps(views.crop_i, views.crop_j, views.crop_h, views.crop_w, views.flip, args.size)
        rendered = renderer.render(pixels, taps, out=workspace)
        own, part = np.searchsorted(need, idx), np.searchsorted(need, partner)
        mine = views.take(own)
        out = None if fresh else pool.get((len(idx), 3, args.size, args.size))
        return renderer.mix(rendered, own, part, recipe.mix, mine.lam, mine.boxes(), out=out)

    a, b = old(), new()
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-3, "the two renderers disagree"
    del a, b
    runs = {"old": old, "new": new, "new, fresh": lambda: new(fresh=True)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        print(f"{name:10s}: {args.batch / min(t):7.0f} views/s best, {args.batch / statistics.median(t):7.0f} median "
              f"({1e3 * statistics.median(t) / args.batch:.3f} ms/view)")
    for name in ("new", "new, fresh"):
        print(f"S1 = {name} / old: {min(times['old']) / min(times[name]):.2f} best, "
              f"{statistics.median(times['old']) / statistics.median(times[name]):.2f} median (target >= 5)")


if __name__ == "__main__":
    main()
