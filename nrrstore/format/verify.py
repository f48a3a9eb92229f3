"""Checking a store end to end: checksums, decodability, labels, keys, and table consistency.

Verification collects *all* problems instead of stopping at the first, so a damaged store is
described completely in one run (one line per problem).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.codecs import CodecLabels, read_prior
from nrrstore.format.distances import file_problems
from nrrstore.format.keys import check_key
from nrrstore.format.layout import INDEX_NAME, MANIFEST_NAME
from nrrstore.format.manifest import digest_problem, read_manifest_doc
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import SoftLabels
from nrrstore.progress import Progress


def verify_store(path: str | os.PathLike[str], progress: Progress | None = None, decode: bool = True) -> list[str]:
    """Return the store's problems, one line each; an empty list means the store is sound.

    Raises `NrrError` only when there is no readable manifest at all.
    """
    store = Store(path, check_digest=False)  # an edited manifest is a problem to report, not a reason to stop
    root = store.path
    digest = digest_problem(read_manifest_doc(root))
    return ([f"{root / MANIFEST_NAME}: {digest}"] if digest else []) + _verify_files(store, root, progress, decode)


def _verify_files(store: Store, root: fs.Location, progress: Progress | None, decode: bool) -> list[str]:
    m = store.manifest
    problems: list[str] = []
    listed = {f.path for f in m.files}

    # 1. Every file: present, right size, right checksum (one listing gives every size; http cannot list).
    present = fs.list_files(root) if fs.can_list(root) else None
    for i, f in enumerate(m.files):
        p = root / f.path
        size = present.get(f.path) if present is not None else _size_or_none(p)
        if size is None:
            problems.append(f"{p}: missing")
        elif size != f.bytes:
            problems.append(f"{p}: size {size} bytes, manifest says {f.bytes}")
        elif fs.sha256(p) != f.sha256:
            problems.append(f"{p}: sha256 mismatch (file changed or corrupt)")
        if progress:
            progress("checksums", i + 1, len(m.files))
    for rel in present or {}:
        if rel != MANIFEST_NAME and rel not in listed:
            problems.append(f"{root / rel}: not listed in the manifest")
    for s in m.shards + [INDEX_NAME]:
        if s not in listed:
            problems.append(f"{root / s}: required file not listed in the manifest")
    if problems:  # contents of damaged files are not worth decoding
        return problems

    # 2. Index against the manifest.
    try:
        index = store.index
    except NrrError as exc:
        return [exc.message]
    keys = index.column("key").to_pylist()
    labels = index.column("label").to_numpy()
    if len(keys) != m.num_images:
        problems.append(f"{root / INDEX_NAME}: {len(keys)} rows, manifest says {m.num_images} images")
    if len(set(keys)) != len(keys):
        problems.append(f"{root / INDEX_NAME}: duplicate keys")
    for k in keys:
        try:
            check_key(k)
        except NrrError as exc:
            problems.append(f"{root / INDEX_NAME}: {exc.problem}")
    if np.bincount(labels, minlength=m.num_classes).tolist() != m.per_class:  # labels are in range (Store.index)
        problems.append(f"{root / INDEX_NAME}: per-class counts differ from the manifest")

    # 3. Every image decodes, has the recorded size and agrees with the index.
    if decode:
        seen = 0
        for img in _iter_all(store, problems):
            where = f"{root}:{img.key}"
            if img.index >= len(keys) or keys[img.index] != img.key:
                problems.append(f"{where}: shard order disagrees with the index")
            elif int(labels[img.index]) != img.label:
                problems.append(f"{where}: label {img.label} in the shard, {labels[img.index]} in the index")
            h, w = img.pixels.shape[:2]
            c = 1 if img.pixels.ndim == 2 else img.pixels.shape[2]
            if (h, w, c) != (m.image.height, m.image.width, m.image.channels):
                problems.append(f"{where}: image is {h}x{w}x{c}, manifest says {m.image.height}x{m.image.width}x{m.image.channels}")
            seen += 1
            if progress:
                progress("images", seen, m.num_images)
        if seen != m.num_images and not problems:
            problems.append(f"{root}: shards hold {seen} images, manifest says {m.num_images}")

    # 4. Distance tables: epochs and image ids in range.
    for part in store.distance_files():
        problems.extend(file_problems(store, part))

    # 5. Soft labels, codec arrays and the class prior: what a student would read, value by value.
    problems.extend(label_array_problems(store, progress))
    return problems


ROWS_PER_READ = 4096  # views read at a time: bounds memory at 1000 classes (16 MB of float32)
SUM_SLACK = 1e-2  # fp16 probabilities of up to 1000 classes sum to 1 within this


def label_array_problems(store: Store, progress: Progress | None = None,
                         only: set[str] | None = None) -> list[str]:
    """Every stored soft label and codec field, checked for what it must mean: shapes as the manifest says,
    probabilities finite in [0, 1] (soft labels summing to 1, a codec's stored ones to at most 1), class ids in
    range and distinct within a view, distances finite and >= 0, the class prior's rows probabilities. A store
    whose checksums agree can still hold such arrays (a foreign or hand-made file); no student should train on
    them. ``only``: check just these arrays ("soft labels" and codec names; the loader checks what it reads)."""
    m = store.manifest
    root, n, c = store.path, m.num_images, m.num_classes
    labels = m.labels
    problems: list[str] = []
    readers: list[tuple[str, int, Any]] = []
    soft = labels.get("softlabels")
    try:
        if soft and (only is None or "soft labels" in only):
            arr = SoftLabels(root, soft)
            if arr.shape[1:] != (n, c):
                problems.append(f"{arr.path}: soft labels have shape {list(arr.shape)}; the store has {n} images of "
                                f"{c} classes")
            else:
                readers.append(("soft labels", arr.shape[0], lambda e, a, b, arr=arr: {"soft": arr.read(e, a, b)}))
        codecs = {k: v for k, v in (labels.get("codecs") or {}).items() if only is None or k in only}
        for name, section in codecs.items():
            if section.get("fields"):
                codec = CodecLabels(root, name, section, c)
                readers.append((name, codec.shape[0], codec.read))
        if labels.get("codecs_prior") and (only is None or codecs):
            read_prior(root, labels["codecs_prior"], c)
    except NrrError as exc:
        return [*problems, exc.message]
    total = sum(epochs for _, epochs, _ in readers)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("label arrays (epochs)", done[0], total)

    for name, epochs, read in readers:
        problem = _array_problem(root, name, epochs, n, read, tick)
        if problem:
            problems.append(problem)
    return problems


def _array_problem(root: Any, name: str, epochs: int, n: int, read: Any, tick: Any) -> str | None:
    """The first problem of one label array, read ``ROWS_PER_READ`` views at a time: one line condemns it."""
    for e in range(epochs):
        for a in range(0, n, ROWS_PER_READ):
            try:
                problem = _view_problem(name, read(e, a, min(n, a + ROWS_PER_READ)))
            except NrrError as exc:
                return exc.message
            if problem:
                return f"{root}: {problem} (epoch {e})"
        tick()
    return None


def _view_problem(name: str, fields: dict[str, np.ndarray]) -> str | None:
    """The meaning checks that `CodecLabels.read` (ranges) leaves to verify: sums and distinct ids."""
    soft = fields.get("soft")
    if soft is not None:
        if not np.isfinite(soft).all() or soft.min() < 0 or soft.max() > 1.0 + 1e-3:
            return f"{name}: probabilities outside [0, 1]"
        sums = soft.sum(axis=1)
        if np.abs(sums - 1.0).max() > SUM_SLACK:
            return f"{name}: a view's probabilities sum to {float(sums[np.abs(sums - 1.0).argmax()]):.4f}, not 1"
    ids = fields.get("ids")
    if ids is not None and ids.shape[1] > 1 and (np.diff(np.sort(ids, axis=1), axis=1) == 0).any():
        return f"{name}: a view names one class twice"
    probs = fields.get("probs")
    if probs is not None and probs.size and probs.sum(axis=1).max() > 1.0 + SUM_SLACK:
        return f"{name}: a view's stored probabilities sum to more than 1"
    return None


def _iter_all(store: Store, problems: list[str]):
    for shard in store.manifest.shards:
        try:
            yield from store.iter_shard(shard)
        except NrrError as exc:
            problems.append(exc.message)


def _size_or_none(p: fs.Location) -> int | None:
    try:
        return fs.file_size(p)
    except (FileNotFoundError, fs.NotFound):
        return None
