"""`distill`: CIDD over streamed shards, NRR refinement, and the store, resumable and distributed.

Data flows one way: one streaming pass over the input keeps, per class, only the candidates CIDD
needs (memory ~ classes_per_pass x mipc patches, independent of the dataset size); selection and
stitching give the initial synthetic images; NRR refines them; each finished class is saved
atomically in a work folder beside the output, so a killed run resumes at the first unfinished class.
Under ``torchrun`` every rank takes a disjoint set of classes; rank 0 assembles the store after a
barrier. The store interleaves classes (slot-major: slot 0 of every class, then slot 1, ...) so that
any run of consecutive images - a shard, a partner group of the augmentation recipe - spans classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrrstore import __version__, kept
from nrrstore.distill.cidd import ClassCandidates, discover, select_and_stitch
from nrrstore.distill.cidd_config import CiddConfig
from nrrstore.distill.nrr import NrrConfig, refine, to_uint8
from nrrstore.distill.presets import METHODS, default_image_encoding, preset_values
from nrrstore.errors import NrrError, NrrWarning, ResumeMismatchError
from nrrstore.format import fs, remote
from nrrstore.format.atomic import atomic_open, atomic_write_bytes, mkdir_own, own_path
from nrrstore.format.cams import write_cams
from nrrstore.format.images import effective_quality
from nrrstore.format.keys import image_key
from nrrstore.format.layout import MANIFEST_NAME, is_store
from nrrstore.format.lock import output_lock
from nrrstore.format.manifest import load_manifest
from nrrstore.format.outputs import check_not_inside
from nrrstore.format.writer import STORE_KIND, StoreWriter, check_output_dir, store_object
from nrrstore.models.cam import CamModel
from nrrstore.models.checkpoint import Teacher, class_mapping_warning, teacher_record
from nrrstore.progress import Progress
from nrrstore.ranks import barrier, dist_info, stopped_error
from nrrstore.sources.shards import iter_labels, iter_samples, read_class_names, resolve_shards

IMAGE_FORMATS = ("png", "webp", "jpg", "jpeg")


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distilled store's images (recorded in its manifest)."""

    method: str
    cidd: CiddConfig
    nrr: NrrConfig
    image_format: str = "png"  # method_config picks by size: see default_image_encoding
    quality: int | None = None
    shard_size: int = 1024
    classes_per_pass: int = 100
    nrr_batch_size: int = 100
    save_cams: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": {"nrr": "nrr-dd", "rded": "rded", "random": "random-real"}[self.method],
            "method": self.method, "ipc": self.cidd.ipc, "cidd": self.cidd.to_dict(), "nrr": self.nrr.to_dict(),
            "image_format": self.image_format, "quality": self.quality, "shard_size": self.shard_size,
            "nrr_batch_size": self.nrr_batch_size, "classes_per_pass": self.classes_per_pass,
            "save_cams": self.save_cams,
        }


def method_config(method: str, ipc: int, image_size: int, *, cidd: dict[str, Any] | None = None,
                  nrr: dict[str, Any] | None = None, **kw: Any) -> DistillConfig:
    """A preset (``nrr`` = NRR-DD, ``rded`` = RDED-style, ``random`` = random real images) plus overrides.

    ``cidd``/``nrr`` hold explicit overrides (None values are ignored), so every ablation between
    the presets is reachable: e.g. ``rded`` with ``nrr={"refine": True}`` refines RDED's selection.
    """
    if method not in METHODS:
        raise NrrError(None, f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    image_format = kw.get("image_format")  # None: chosen by the size below
    if image_format is not None and str(image_format).lower() not in IMAGE_FORMATS:  # not after hours of work
        raise NrrError(None, f"unknown image format {image_format!r}; use one of {', '.join(IMAGE_FORMATS)}")
    c_args, n_args = preset_values(method, ipc, image_size, cidd, nrr)
    if kw.get("image_format") is None:  # the default depends on the size; an explicit one is kept
        kw["image_format"], default_quality = default_image_encoding(image_size)
        if kw.get("quality") is None:
            kw["quality"] = default_quality
    kw["quality"] = effective_quality(kw["image_format"], kw.get("quality"))  # recorded as really used
    return DistillConfig(method=method, cidd=CiddConfig(**c_args), nrr=NrrConfig(**n_args), **kw)


# ------------------------------------------------------------------------------------------------
# Ranks (torchrun) and the work folder.


def work_dir(out: Path) -> Path:
    return out.with_name(f".work-{out.name}")


def _class_file(work: Path, c: int, ext: str) -> Path:
    return work / f"class-{c:05d}.{ext}"


def _class_done(work: Path, c: int) -> bool:
    return _class_file(work, c, "json").is_file()  # written last: the class is done


def _classes_done(work: Path) -> int:
    return len(list(work.glob("class-*.json"))) if work.is_dir() else 0


def _stopped(exc: BaseException, out: Path, work: Path, num_classes: int, world: int) -> BaseException:
    """What a failed run leaves: nothing when no class was finished, else its finished classes (`ranks.stopped`)."""
    done = _classes_done(work)
    return stopped_error(exc, out, work, done, f"{done} of {num_classes} classes are finished and kept in {work}: rerun "
                                         f"the same command to resume them, or delete {work} to discard them", world)


def _check_params(work: Path, params: dict[str, Any], rank: int, world: int) -> None:
    """Create the work folder, or refuse to resume one made with different arguments."""
    path = work / "params.json"
    text = json.dumps(params, indent=2, sort_keys=True)
    if path.is_file():
        old = json.loads(path.read_text())
        if old != params and _classes_done(work):
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise ResumeMismatchError(work, f"an unfinished distill with different arguments is here (differs in: "
                                            f"{', '.join(diff)}); rerun with the same arguments or delete this folder")
        if old != params and rank == 0:  # killed before finishing a class: nothing to keep, start afresh
            atomic_write_bytes(path, text.encode())
    elif rank == 0:
        mkdir_own(work)
        atomic_write_bytes(path, text.encode())
    barrier(world)


# ------------------------------------------------------------------------------------------------
# The job.


@dataclass
class DistillResult:
    store: fs.Location
    summary: dict[str, Any]


def distill(
    inputs: str | os.PathLike[str] | list[str],
    teacher: Teacher,
    out: str | os.PathLike[str],
    cfg: DistillConfig,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    after_class: Callable[[int], None] | None = None,
) -> DistillResult:
    """Distill the shards ``inputs`` into the store ``out``, a folder or an s3:// or gs:// URL (see the
    module docstring; remote outputs are made in a staging folder and uploaded, `nrrstore.format.remote`)."""
    t_start = time.perf_counter()
    loc = fs.writable_location(out)
    if isinstance(loc, fs.Url):
        return _distill_remote(inputs, teacher, loc, cfg, overwrite, progress, after_class)
    out = loc
    check_not_inside(out, {"--in": inputs}, "--out")
    if not all(bool(torch.isfinite(t).all()) for t in teacher.model.state_dict().values() if t.is_floating_point()):
        raise NrrError(teacher.spec, "the teacher's weights are not finite (NaN or infinite); nothing was distilled")
    urls = resolve_shards(inputs)
    rank, world = dist_info()
    names = read_class_names(inputs)
    if names is not None and len(names) != teacher.num_classes:
        raise NrrError(urls[0] if not isinstance(inputs, (str, os.PathLike)) else inputs,
                       f"the data has {len(names)} classes (classes file) but the teacher has {teacher.num_classes}")
    classes = names or list(teacher.classes)
    params = {
        "config": cfg.to_dict(), "inputs": urls, "teacher_sha256": teacher.sha256, "classes": classes,
        "tool_version": __version__,
    }
    finished = _finished(out, cfg, teacher, urls, overwrite)
    if finished is not None:
        return finished
    if rank == 0:
        check_output_dir(out, overwrite)
    work = own_path(work_dir(out))  # a planted link is refused, never followed
    with output_lock(out) if rank == 0 else contextlib.nullcontext():
        try:
            summary = _distill_locked(inputs, urls, teacher, out, work, cfg, classes, params, rank, world, overwrite,
                                      progress, after_class)
        except BaseException as exc:
            stopped = _stopped(exc, out, work, teacher.num_classes, world)
            if stopped is exc:
                raise
            raise stopped from None
    summary.update(total_s=round(time.perf_counter() - t_start, 3))
    mapping = class_mapping_warning(teacher, names, "the input shards")
    if mapping and rank == 0:  # once the store stands: a refused run says one thing only
        warnings.warn(mapping, NrrWarning, stacklevel=2)
    return DistillResult(out, summary)


def _finished(out: fs.Location, cfg: DistillConfig, teacher: Teacher, urls: list[str],
              overwrite: bool) -> DistillResult | None:
    """The store ``out`` when it is already complete and made by this very job (a rerun is a no-op)."""
    if overwrite or not is_store(out):
        return None
    m = load_manifest(out)
    made_by = {k: v for k, v in m.method.items() if k not in ("relabel", "sources_used")}  # added after distill
    if made_by == cfg.to_dict() and m.teacher.get("sha256") == teacher.sha256 and m.source.get("shards") == urls:
        return DistillResult(out, {"store": str(out), "resumed": "complete", "images": m.num_images})
    return None


def _distill_remote(inputs: Any, teacher: Teacher, url: fs.Url, cfg: DistillConfig, overwrite: bool,
                    progress: Progress | None, after_class: Callable[[int], None] | None) -> DistillResult:
    """Distill into the staging folder of ``url`` (resumable there), then upload the store, manifest last."""
    urls = resolve_shards(inputs)
    finished = _finished(url, cfg, teacher, urls, overwrite)
    if finished is not None:
        return finished
    fingerprint = {"job": "distill", "config": cfg.to_dict(), "inputs": urls, "teacher_sha256": teacher.sha256,
                   "tool_version": __version__, "overwrite": overwrite}

    def job(local: Path) -> dict[str, Any]:
        return distill(inputs, teacher, local, cfg, overwrite=overwrite, progress=progress,
                       after_class=after_class).summary

    if dist_info()[0] != 0:  # under torchrun rank 0 publishes; the ranks share its staging folder
        return DistillResult(url, job(remote.twin(url)))
    summary = remote.run_remote(url, fingerprint, job, marker=MANIFEST_NAME, kind=STORE_KIND,
                                ours=store_object, overwrite=overwrite)
    summary["store"] = str(url)
    return DistillResult(url, summary)


def _distill_locked(inputs: Any, urls: list[str], teacher: Teacher, out: Path, work: Path, cfg: DistillConfig,
                    classes: list[str], params: dict[str, Any], rank: int, world: int, overwrite: bool,
                    progress: Progress | None, after_class: Callable[[int], None] | None) -> dict[str, Any]:
    _check_params(work, params, rank, world)
    groups = class_groups(teacher.num_classes, cfg.classes_per_pass, rank, world)
    mine = [c for g in groups for c in g]
    todo = [g for g in groups if not all(_class_done(work, c) for c in g)]  # a group is redone whole
    times = {"cidd_s": 0.0, "nrr_s": 0.0, "assemble_s": 0.0}
    stats: dict[str, Any] = {"images_read": 0, "classes_done_before": len(mine) - sum(len(g) for g in todo)}
    cam_model = CamModel(teacher.model)
    step = "NRR (classes)" if cfg.nrr.refine else ("select (classes)" if cfg.method == "random"
                                                    else "select and stitch (classes)")
    done = stats["classes_done_before"]
    for k, chunk in enumerate(todo):
        t0 = time.perf_counter()
        task = "CIDD (images decoded)" if len(todo) == 1 else f"CIDD pass {k + 1}/{len(todo)} (images decoded)"
        cands = _discover_chunk(urls, teacher, cfg, chunk, classes, cam_model, stats, progress, task)
        times["cidd_s"] += time.perf_counter() - t0
        short = [(c, len(cands[c])) for c in chunk if len(cands[c]) < cfg.cidd.need]
        if short:
            detail = "; ".join(f"class {c} ({classes[c]}): {n} candidate images, need {cfg.cidd.need} "
                               f"({cfg.cidd.need - n} missing)" for c, n in short)
            raise NrrError(inputs if isinstance(inputs, (str, os.PathLike)) else urls[0],
                           f"too few images for ipc {cfg.cidd.ipc} x {cfg.cidd.factor ** 2} patches: {detail}")
        t0 = time.perf_counter()
        steps = _nrr_step_progress(progress, len(todo), k) if cfg.nrr.refine else None
        for c in _refine_group(work, chunk, cands, teacher, cfg, cam_model, steps):
            done += 1
            kept.note(str(work), f"{done} of {len(mine)} finished classes in {work}")
            if progress:
                progress(step, done, len(mine))
            if after_class:
                after_class(c)
        times["nrr_s"] += time.perf_counter() - t0
    barrier(world)
    summary: dict[str, Any] = {"store": str(out), "rank": rank, "world_size": world, "classes": len(mine), **stats}
    if rank == 0:
        t0 = time.perf_counter()
        manifest = _assemble(out, work, teacher, cfg, classes, urls, overwrite, progress)
        times["assemble_s"] = time.perf_counter() - t0
        shutil.rmtree(work, ignore_errors=True)
        kept.clear(str(work))
        summary.update(images=manifest.num_images, shards=len(manifest.shards),
                       bytes=sum(f.bytes for f in manifest.files), sources_used=manifest.method["sources_used"])
    barrier(world)
    summary.update({k: round(v, 3) for k, v in times.items()})
    return summary


def source_priority(seed: int, label: int, key: str) -> int:
    """A seeded 64-bit priority of a source image: the ``mipc`` lowest of a class are its sample.

    A pure function of (seed, class, key), so the sample does not depend on shard order, batching
    or the rank that runs the class; blake2b keeps it the same on every platform and version.
    """
    digest = hashlib.blake2b(f"{seed}\x00{label}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def sample_sources(urls: list[str], num_classes: int, chunk: list[int], mipc: int, seed: int) -> dict[int, dict[str, int]]:
    """Per class of ``chunk``: {key: index} of its seeded random sample of ``mipc`` source images.

    One pass over the labels (no image is decoded); memory is ``mipc`` keys per class. The index
    (the crop generator's counter) is the image's rank by priority.
    """
    want = set(chunk)
    heaps: dict[int, list[tuple[int, str]]] = {c: [] for c in chunk}
    for key, label in iter_labels(urls, num_classes=num_classes):
        if label not in want:
            continue
        item = (-source_priority(seed, label, key), key)  # max-heap of the mipc lowest priorities
        heap = heaps[label]
        if len(heap) < mipc:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    return {c: {key: i for i, (_, key) in enumerate(sorted(heap, reverse=True))} for c, heap in heaps.items()}


def _discover_chunk(urls: list[str], teacher: Teacher, cfg: DistillConfig, chunk: list[int], classes: list[str],
                    cam_model: CamModel, stats: dict[str, Any], progress: Progress | None,
                    task: str = "CIDD (images decoded)") -> dict[int, ClassCandidates]:
    """One streaming pass: route each wanted image to its class until every class has mipc images.

    With ``sources="random"`` a first pass over the labels fixes each class's sample, and this pass
    decodes only those images; their candidates are put in sample order at the end of the pass.
    """
    want = set(chunk)
    cands = {c: ClassCandidates(c, cfg.cidd, teacher, cam_model) for c in chunk}
    counts = {c: 0 for c in chunk}
    batch: list[tuple[str, torch.Tensor, int, int]] = []
    mipc = cfg.cidd.mipc
    size, channels = teacher.image_size, teacher.in_channels
    chosen = sample_sources(urls, teacher.num_classes, chunk, mipc, cfg.cidd.seed) \
        if cfg.cidd.sources == "random" else None
    pending: dict[int, list[tuple[Any, Any]]] = {c: [] for c in chunk}  # random sources: (patch, candidate)

    def flush() -> None:
        if not batch:
            return
        keys = [b[0] for b in batch]
        images = torch.stack([b[1] for b in batch])
        labels = [b[2] for b in batch]
        patches, found = discover(teacher, keys, images, labels, [b[3] for b in batch], cfg.cidd, cam_model)
        for c in sorted(set(labels)):
            rows = [i for i, lab in enumerate(labels) if lab == c]
            if chosen is None:
                cands[c].extend(patches[rows], [found[i] for i in rows])
            else:
                pending[c].extend((patches[i], found[i]) for i in rows)
        batch.clear()

    filled = 0
    needed = lambda c: c in want and counts[c] < mipc  # images of other classes are not decoded
    sampled = (lambda c, key: key in chosen[c]) if chosen is not None else None
    # known up front for a seeded sample; at most mipc per class when taking the first ones
    expected = sum(len(chosen[c]) for c in chunk) if chosen is not None else mipc * len(chunk)
    n = 0
    for n, s in enumerate(iter_samples(urls, num_classes=teacher.num_classes, want=needed, want_key=sampled), 1):
        stats["images_read"] += 1
        if progress and n % 64 == 0:
            progress(task, n, expected)
        c = s.label
        img = s.image
        h, w = img.shape[:2]
        ch = 1 if img.ndim == 2 else img.shape[2]
        if (h, w) != (size, size) or ch != channels:
            raise NrrError(s.shard, f"image {s.key!r} is {h}x{w}x{ch}, the teacher takes {size}x{size}x{channels}")
        t = torch.from_numpy(np.array(img if img.ndim == 3 else img[:, :, None])).permute(2, 0, 1)
        batch.append((s.key, t.contiguous(), c, counts[c] if chosen is None else chosen[c][s.key]))
        counts[c] += 1
        if counts[c] == mipc:
            filled += 1
        if len(batch) >= cfg.cidd.batch_size:
            flush()
        if filled == len(chunk):
            break
    if progress:
        progress(task, n, n)  # done: fewer than expected when a class holds fewer than mipc images
    flush()
    for c, items in pending.items():
        items.sort(key=lambda item: item[1].index)
        if items:
            cands[c].extend(torch.stack([p for p, _ in items]), [f for _, f in items])
    return cands


def class_groups(num_classes: int, group_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's class groups: classes ``[g*G, (g+1)*G)`` form group g, and rank r takes ``g % world == r``.

    A group is gathered in one pass over the input and refined together, so NRR's batches mix its
    classes: the BatchNorm-statistics loss matches dataset-wide running statistics, which a batch of
    one class cannot (SRe2L batches many classes for the same reason). Groups are fixed by the class
    count and ``classes_per_pass`` alone, so the images do not depend on the number of ranks.
    """
    groups = [list(range(g, min(g + group_size, num_classes))) for g in range(0, num_classes, group_size)]
    return [grp for g, grp in enumerate(groups) if g % world == rank]


def _nrr_step_progress(progress: Progress | None, groups: int, k: int) -> Progress | None:
    """NRR's bar: image-steps (images x iterations) of class group ``k``, so the bar moves every step with a
    rate and an ETA; the "NRR (classes)" bar then counts finished classes."""
    if progress is None:
        return None
    task = "NRR (image steps)" if groups == 1 else f"NRR group {k + 1}/{groups} (image steps)"
    return lambda _task, done, total: progress(task, done, total)


def _refine_group(work: Path, group: list[int], cands: dict[int, ClassCandidates], teacher: Teacher,
                  cfg: DistillConfig, cam_model: CamModel, progress: Progress | None = None) -> list[int]:
    """Select and stitch every class of ``group``, refine them in mixed-class batches, save each class.

    Batches take the images slot-major (slot 0 of every class, then slot 1, ...), ``nrr_batch_size`` at
    a time. Each class is saved atomically (arrays first, the json marks it done); a group interrupted
    half-saved is redone whole on resume, which gives the same bytes.
    """
    used = {c: len(cands[c]) for c in group}
    picked = {c: select_and_stitch(cands.pop(c)) for c in group}  # c -> (images [ipc,C,H,W], metas)
    ipc = cfg.cidd.ipc
    order = [(c, s) for s in range(ipc) for c in group]
    images = torch.stack([picked[c][0][s] for c, s in order])
    labels = torch.tensor([c for c, _ in order], dtype=torch.long)
    outs, batch_stats = [], []
    total = len(order) * cfg.nrr.iterations
    for s in range(0, len(order), cfg.nrr_batch_size):
        n = min(cfg.nrr_batch_size, len(order) - s)
        steps = None if progress is None else (  # image-steps of the group: earlier batches done, this one's so far
            lambda done, _total, s=s, n=n, report=progress: report("", s * cfg.nrr.iterations + done * n, total))
        x, st = refine(teacher, images[s:s + cfg.nrr_batch_size], labels[s:s + cfg.nrr_batch_size], cfg.nrr,
                       progress=steps, cam_model=cam_model)
        st.pop("loss_history", None)
        outs.append(x.cpu())
        batch_stats.append(st)
    final = torch.cat(outs)
    cams = None
    if cfg.save_cams:
        with torch.no_grad():
            dev = next(teacher.model.parameters()).device
            cams = torch.cat([cam_model.cam(teacher.normalize(final[s:s + cfg.nrr_batch_size].to(dev)),
                                            labels[s:s + cfg.nrr_batch_size].to(dev)).cpu()
                              for s in range(0, len(order), cfg.nrr_batch_size)])
    u8 = to_uint8(final)
    for c in group:
        rows = [i for i, (cc, _) in enumerate(order) if cc == c]  # slots 0..ipc-1 in order
        arrays = {"images": u8[rows].permute(0, 2, 3, 1).numpy()}
        if cams is not None:
            arrays["cams"] = (cams[rows].numpy() * 255.0).round().astype(np.uint8)
        for name, arr in arrays.items():  # plain .npy so assembly can memory-map them
            with atomic_open(_class_file(work, c, f"{name}.npy")) as f:
                np.save(f, arr, allow_pickle=False)
        record = {"metas": picked[c][1], "nrr": batch_stats, "group": group, "sources_used": used[c]}
        atomic_write_bytes(_class_file(work, c, "json"), json.dumps(record, sort_keys=True).encode())
    return list(group)


def _load_class(work: Path, c: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = _class_file(work, c, "images.npy")
    try:
        arrays = {"images": np.load(path, mmap_mode="r", allow_pickle=False)}
        if _class_file(work, c, "cams.npy").is_file():
            arrays["cams"] = np.load(_class_file(work, c, "cams.npy"), mmap_mode="r", allow_pickle=False)
        meta = json.loads(_class_file(work, c, "json").read_text())
    except (OSError, ValueError) as exc:
        raise NrrError(path, f"unreadable work file ({exc}); delete it to redo the class") from None
    return arrays, meta


def _assemble(out: Path, work: Path, teacher: Teacher, cfg: DistillConfig, classes: list[str], urls: list[str],
              overwrite: bool, progress: Progress | None):
    """Write the store from the per-class results, classes interleaved (slot-major)."""
    missing = [c for c in range(teacher.num_classes) if not _class_done(work, c)]
    if missing:
        raise NrrError(work, f"classes {missing[:10]} are not finished (a rank failed?)")
    per_class = [_load_class(work, c) for c in range(teacher.num_classes)]
    ipc = cfg.cidd.ipc
    teacher_info = teacher_record(teacher)
    method = cfg.to_dict()
    # how many real images each class really had to choose from (mipc, or fewer where a class is smaller)
    method["sources_used"] = [int(meta.get("sources_used", cfg.cidd.mipc)) for _, meta in per_class]
    with StoreWriter(out, classes, image_format=cfg.image_format, quality=cfg.quality, shard_size=cfg.shard_size,
                     overwrite=overwrite, normalization={"mean": list(teacher.mean), "std": list(teacher.std)},
                     teacher=teacher_info, method=method, source={"shards": urls}) as w:
        total = ipc * len(classes)
        for s in range(ipc):
            for c, (arrays, meta) in enumerate(per_class):
                img = arrays["images"][s]
                w.add_image(image_key(c, s), img[:, :, 0] if img.shape[2] == 1 else img, c, meta["metas"][s])
                if progress:
                    progress("writing store", w.num_images, total)
        if cfg.save_cams:
            h, wd = per_class[0][0]["cams"].shape[1:]

            def cams(lo: int, hi: int) -> np.ndarray:  # store order is slot-major, as the images above
                return np.stack([per_class[i % len(classes)][0]["cams"][i // len(classes)] for i in range(lo, hi)])

            w.set_meta("labels", {"cams": write_cams(w, total, h, wd, cams)})
        return w.finalize(progress)
