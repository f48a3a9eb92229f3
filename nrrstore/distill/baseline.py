"""The random-real baseline: a seeded random sample of real images per class, written as a store.

DD-Ranking's "improvement over random" compares a distilled set with random real images of the same
budget. The sample is the ``ipc`` images of each class with the lowest seeded priority
(`nrrstore.distill.pipeline.source_priority`), so it needs no teacher, does not depend on shard
order, and two calls with the same seed give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nrrstore.errors import NrrError
from nrrstore.format.keys import image_key
from nrrstore.format.writer import StoreWriter
from nrrstore.progress import Progress
from nrrstore.sources.shards import iter_samples, read_class_names, resolve_shards


def random_real_store(
    train: Any,
    out: str | os.PathLike[str],
    ipc: int,
    seed: int,
    *,
    classes: list[str] | None = None,
    normalization: dict[str, list[float]] | None = None,
    overwrite: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Write ``ipc`` random real images per class of ``train`` as a store at ``out``."""
    from nrrstore.distill.pipeline import sample_sources

    urls = resolve_shards(train)
    names = classes or read_class_names(train)
    if names is None:
        raise NrrError(str(train), "needs class names (classes.txt beside the shards) for the random baseline")
    k = len(names)
    chosen = sample_sources(urls, k, list(range(k)), ipc, seed)
    short = [(c, len(keys)) for c, keys in chosen.items() if len(keys) < ipc]
    if short:
        c, n = short[0]
        raise NrrError(str(train), f"class {c} ({names[c]}) has {n} images, the baseline needs {ipc}")
    picked: dict[int, dict[int, Any]] = {c: {} for c in range(k)}
    for s in iter_samples(urls, num_classes=k, want_key=lambda c, key: key in chosen[c]):
        picked[s.label][chosen[s.label][s.key]] = s
    with StoreWriter(out, list(names), overwrite=overwrite, normalization=normalization,
                     method={"name": "random-real", "method": "random-baseline", "ipc": ipc, "seed": seed,
                             "sampler": "lowest blake2b priority per class"},
                     source={"shards": urls}) as w:
        for slot in range(ipc):  # slot-major, like distill: any run of images spans classes
            for c in range(k):
                s = picked[c][slot]
                w.add_image(image_key(c, slot), s.image, c, {"source_key": s.key})
                if progress:
                    progress("random baseline", w.num_images, ipc * k)
        w.finalize(progress)
    return Path(out)
