"""DBR relabeling: the teacher's two distances for every (image, epoch) view of a finished store.

Every view is rendered from the images *as stored* (decoded from the shards) by the same data path
the student's loader uses (:mod:`nrrstore.replay.stream`), so the student later sees exactly the
pixels these numbers were computed on.

A pipeline, so that a GPU teacher is not kept waiting: ``workers`` processes decode partner groups
and send uint8 images; this process moves them to ``device``, renders the views there, runs the
teacher (under ``torch.autocast`` with ``amp``), computes both distances and scatters them into
the epoch's buffers on the device. Nothing waits for the device until an epoch is complete (one
copy back per epoch, no synchronisation per batch).

Ranks: under ``torchrun`` rank r computes the epoch chunks ``k % world == r`` and rank 0 installs
them after a barrier; every chunk's bytes depend only on its epochs, so the store is
byte-identical to a one-rank run.

Streaming and resume: epochs are processed in chunks of ``epochs_per_file``; a chunk becomes one
Parquet file with one row group per epoch, written under a temporary name and renamed when complete.
Work in progress lives in ``STORE/.relabel/`` (the arguments in ``state.json`` and the finished
chunk files); a killed job rerun with the same arguments continues with the first unfinished chunk
and produces byte-identical files. When every chunk is done the files move into ``labels/``, the
manifest is rewritten by :func:`~nrrstore.format.update.update_store` (last), and the work folder is
removed, so a finished store holds nothing that ``verify`` does not know about. Memory is bounded
by three epochs' labels (one being computed, two waiting for the writer thread) plus a decoded-image cache
(``cache_mb``, shared by the decoding processes), whatever the number of epochs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nrrstore import kept
from nrrstore.devices import amp_dtype, resolve_device
from nrrstore.errors import LabelsExistError, NrrError, NrrWarning
from nrrstore.format import fs, quant, remote
from nrrstore.format.atomic import mkdir_own, own_path
from nrrstore.format.codecs import (
    Codec,
    codec_bytes,
    codecs_section,
    codecs_to_write,
    install_codecs,
    parse_codecs,
    write_prior,
)
from nrrstore.format.distances import (
    DEFAULT_EPOCHS_PER_FILE,
    check_mode,
    check_precision,
    distance_files_bytes,
    distances_section,
    epoch_chunks,
    install_chunks,
)
from nrrstore.format.layout import (
    DISTANCE_FILE_GLOB,
    LABEL_FILE_KINDS,
    MANIFEST_NAME,
    codecs_dir,
    distance_file_name,
    label_version,
    softlabels_path,
)
from nrrstore.format.layout import RELABEL_WORK_DIR as WORK_DIR
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_writable
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import install_softlabels, softlabels_section
from nrrstore.format.update import update_store
from nrrstore.format.workstate import load_state, remove_interrupted_writes, save_state
from nrrstore.format.writer import STORE_KIND, store_object
from nrrstore.labels.teacher_pass import TeacherPass
from nrrstore.models.checkpoint import Teacher, class_mapping_warning, load_teacher, teacher_record
from nrrstore.progress import Progress
from nrrstore.ranks import barrier, dist_info, stopped_error
from nrrstore.replay.recipe import RECIPE_VERSION, AugRecipe, store_recipe
from nrrstore.replay.workers import worker_count
from nrrstore.train.loader import open_store
from nrrstore.units import human_bytes


def default_recipe(store: Store, teacher: Teacher, **overrides: Any) -> AugRecipe:
    """The store's recipe (else ``AugRecipe(size=teacher input size, seed=0)``) with ``overrides``.

    Its renderer is always the current one (``version`` = ``RECIPE_VERSION``): relabeling
    computes every distance afresh, so nothing ties it to the renderer of earlier labels.
    """
    m = store.manifest
    base = store_recipe(m, store.manifest_path).to_dict() if m.augmentation else \
        AugRecipe(size=teacher.image_size, seed=0).to_dict()
    base["version"] = RECIPE_VERSION
    base.update({k: v for k, v in overrides.items() if v is not None})
    return AugRecipe.from_dict(base)


def _store_job(job: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run ``job(store, ...)`` holding the store's write lock; a failure leaves no empty work folder.

    Finished chunks are kept for a resume, and the error then says how to resume or discard them.
    Under torchrun rank 0 holds the lock for all ranks (one job), and only a one-rank run removes
    the work folder (with several ranks another one may still be writing there).
    """

    @functools.wraps(job)
    def run(store: Store | str | os.PathLike[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        root = store.path if isinstance(store, Store) else fs.writable_location(store)
        if isinstance(root, fs.Url):
            return _remote_job(run, root, args, kwargs)
        if root.is_dir():
            check_writable(root)
        rank, world = dist_info()
        with output_lock(root) if rank == 0 else contextlib.nullcontext():
            try:
                return job(store, *args, **kwargs)
            except BaseException as exc:
                stopped = _stopped(exc, root, root / WORK_DIR, world)
                if stopped is exc:
                    raise
                raise stopped from None

    return run


def _remote_job(run: Callable[..., dict[str, Any]], url: fs.Url, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> dict[str, Any]:
    """Relabel a store on an object store: fetched into its staging folder, relabelled there (resumable as
    locally), then the new label files and the manifest (last) are uploaded (`nrrstore.format.remote`)."""
    if args and not isinstance(args[0], Teacher):
        args = (load_teacher(args[0], resolve_device(kwargs.get("device", "cpu"))), *args[1:])
    local_only = ("progress", "device", "workers", "cache_mb")
    fingerprint = {"job": "relabel", "args": [a.sha256 if isinstance(a, Teacher) else a.to_dict()
                                              if isinstance(a, AugRecipe) else a for a in args],
                   "kwargs": {k: v.to_dict() if isinstance(v, AugRecipe) else v
                              for k, v in kwargs.items() if k not in local_only}}
    if dist_info()[0] != 0:  # under torchrun rank 0 fetches and publishes; the ranks share its staging folder
        return run(remote.twin(url), *args, **kwargs)
    summary = remote.run_remote(url, fingerprint, lambda local: run(local, *args, **kwargs), marker=MANIFEST_NAME,
                                kind=STORE_KIND, ours=store_object, fetch=True)
    summary["store"] = str(url)
    return summary


def _stopped(exc: BaseException, root: Path, work: Path, world: int) -> BaseException:
    finished = len(list(work.glob(DISTANCE_FILE_GLOB))) if work.is_dir() else 0
    return stopped_error(exc, root, work, finished, f"{finished} finished chunk file(s) are kept in {work}: rerun the same "
                                              f"relabel to resume, or delete {work} to discard them", world)


@_store_job
def relabel(
    store: Store | str | os.PathLike[str],
    teacher: Teacher | str | os.PathLike[str],
    epochs: int,
    recipe: AugRecipe | None = None,
    precision: str = "fp16",
    full_softlabels: bool = False,
    *,
    mode: str = "seeded",
    seed: int | None = None,
    epochs_per_file: int = DEFAULT_EPOCHS_PER_FILE,
    batch_size: int = 256,
    quant_max: float | None = None,
    overwrite: bool = False,
    cache_mb: int = 512,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    workers: int | None = None,
    codecs: str | list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write DBR distances for ``epochs`` epochs of ``store``, and the other label ``codecs`` asked for (e.g.
    ``"dbr,topk:2,dbrc:1"``, :mod:`nrrstore.format.codecs`; ``full`` = ``full_softlabels``) from the same logits.

    ``recipe`` defaults to the store's own (see :func:`default_recipe`) with ``seed`` as its
    augmentation seed when given; ``mode="explicit"`` also
    stores each view's parameters as columns. ``precision="int8"`` quantizes with scale
    ``quant_max`` (default: 1.25 x the largest distance of epoch 0, see :mod:`nrrstore.format.quant`).
    ``amp``: "bf16" or "fp16" runs the teacher under autocast (default float32).
    ``workers``: decoding processes (default: none on the CPU, where the teacher uses every core;
    one per CPU up to 4 otherwise). ``batch_size``, ``epochs_per_file`` and ``amp`` change the bytes
    written (teacher batches, file split, precision), so a resumed job must repeat them; the
    device and the worker count are not checked.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    amp_dt = amp_dtype(amp, dev)
    st = open_store(store).checked(under=("images/", "index"))  # no labels for images edited in place
    m = st.manifest
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher, dev)
    wanted = codecs_to_write(codecs, bool(full_softlabels), m.num_classes)
    full_softlabels = Codec("full") in wanted
    recipe, quant_max = _check_inputs(st, teacher, recipe, seed, precision, mode, epochs, epochs_per_file,
                                      batch_size, quant_max, full_softlabels, wanted)
    if workers is None:
        workers = 0 if dev.type == "cpu" else worker_count(None)
    workers = worker_count(workers)
    rank, world = dist_info()

    root = st.path
    assert isinstance(root, Path)  # _store_job relabels a remote store in a local staging folder
    work = own_path(root / WORK_DIR)  # a planted link is refused, never followed
    args = {
        "teacher_sha256": teacher.sha256, "epochs": epochs, "recipe": recipe.to_dict(), "precision": precision,
        "mode": mode, "full_softlabels": bool(full_softlabels), "epochs_per_file": epochs_per_file,
        "batch_size": batch_size, "quant_max": quant_max, "num_images": m.num_images, "amp": amp_key(amp),
        "index_sha256": m.index_sha256, "codecs": [c.name for c in wanted],
    }
    state = _start(st, work, args, quant_max, overwrite, rank, world)
    chunks = epoch_chunks(epochs, epochs_per_file)
    job = TeacherPass(st, teacher, recipe, epochs, precision, mode, full_softlabels, batch_size, dev, amp_dt, workers, work,
               cache_mb, progress, [c for c in wanted if c.has_arrays])
    resumed = computed = 0
    if state["phase"] == "computing":
        resumed, computed = _compute(job, work, state, chunks, rank, world)
    summary: dict[str, Any] = {"store": str(st.path), "rank": rank, "world_size": world, "epochs": epochs,
                               "images": m.num_images, "views": epochs * m.num_images, "precision": precision,
                               "mode": mode, "chunks_resumed": resumed, "chunks_computed": computed,
                               "clipped": job.clipped, "quant_max": state["quant_max"], "device": str(dev),
                               "amp": amp_key(amp), "workers": workers, "augmentation": recipe.to_dict(),
                               "softlabels": full_softlabels, "codecs": [c.name for c in wanted]}
    if rank == 0:
        summary.update(_finish(st, m, work, chunks, args, state, teacher, recipe, job, dev))
    barrier(world)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    mapping = class_mapping_warning(teacher, m.classes, "the store")
    if mapping and rank == 0:  # once the labels stand: a refused run says one thing only
        warnings.warn(mapping, NrrWarning, stacklevel=2)
    return summary


def _check_inputs(st: Store, teacher: Teacher, recipe: AugRecipe | None, seed: int | None, precision: str, mode: str,
                  epochs: Any, epochs_per_file: Any, batch_size: Any, quant_max: float | None,
                  full_softlabels: bool = False, codecs: list[Codec] | None = None) -> tuple[AugRecipe, float | None]:
    """Refuse what relabel cannot do before any work; ``(the recipe to replay, the checked int8 scale)``."""
    m = st.manifest
    check_precision(precision)
    check_mode(mode)
    for name, v in (("epochs", epochs), ("epochs per file", epochs_per_file), ("batch size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise NrrError(None, f"{name} must be a positive integer, got {v!r}")
    if quant_max is not None:
        quant_max = quant.check_max(quant_max)
    if teacher.num_classes != m.num_classes:
        raise NrrError(teacher.spec, f"teacher has {teacher.num_classes} classes but the store has {m.num_classes}")
    if teacher.in_channels != m.image.channels:
        hint = "; make the images grey with --mode L (RDED writes RGB even for grey data)" \
            if teacher.in_channels == 1 and "import" in m.method else ""
        raise NrrError(teacher.spec, f"teacher takes {teacher.in_channels} channel(s) but store images have "
                                     f"{m.image.channels}{hint}")
    if recipe is not None and seed is not None and recipe.seed != seed:
        raise NrrError(None, f"seed {seed} contradicts the recipe's seed {recipe.seed}; give one of them")
    _check_disk(st, epochs, precision, full_softlabels, codecs or [], epochs_per_file, mode == "explicit")
    recipe = recipe or default_recipe(st, teacher, seed=seed)
    if recipe.size != teacher.image_size:
        raise NrrError(teacher.spec, f"views are {recipe.size} px (augmentation size) but the teacher takes "
                                     f"{teacher.image_size} px")
    return recipe, quant_max


def _check_disk(st: Store, epochs: int, precision: str, full_softlabels: bool, codecs: list[Codec],
                per_file: int, explicit: bool) -> None:
    """Refuse before any work a job whose labels cannot fit on the store's disk (see `check_labels_fit`)."""
    m = st.manifest
    if isinstance(st.path, Path):
        extra = sum(c.raw_bytes_per_view(m.num_classes, 0) / 2 for c in codecs if c.has_arrays)
        check_labels_fit(st.path, m.num_images, m.num_classes, epochs, precision, full_softlabels,
                         extra_per_view=extra, per_file=per_file, explicit=explicit)


def check_labels_fit(where: Path, images: int, classes: int, epochs: int, precision: str, full_softlabels: bool,
                     option: str = "--epochs", extra_per_view: float = 0.0, *,
                     per_file: int = DEFAULT_EPOCHS_PER_FILE, explicit: bool = False) -> None:
    """Refuse labels that cannot fit on the disk holding ``where``, so a mistyped ``option`` ends in one line, not
    in a full disk or an exhausted memory hours later. The distance files are sized as a probe of them measures
    (`distance_files_bytes`: 8 B per view at 100 images, 22 B at 20, 3.6 B at 50,000); soft labels and codec
    arrays by half their raw bytes (``extra_per_view``), a lower bound after compression."""
    arrays = epochs * images * ((classes if full_softlabels else 0) + extra_per_view)
    need = distance_files_bytes(images, epochs, per_file, precision, explicit) + int(arrays)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise NrrError(where, f"{epochs} epochs of {images} images need at least {human_bytes(need)} of labels, "
                              f"and the disk holds {human_bytes(free)} free; use fewer {option} (labels for E epochs "
                              "serve any longer student run with --cycle)")


def _compute(job: TeacherPass, work: Path, state: dict[str, Any], chunks: list[tuple[int, int]], rank: int,
             world: int) -> tuple[int, int]:
    """This rank's share of the epoch files, skipping those already written; ``(resumed, computed)``."""
    resumed = computed = 0
    if rank == 0:  # created once, before the ranks write their epochs into them
        remove_interrupted_writes(work)  # a killed run's half-written chunks: rewritten below
        if job.soft:
            job.softlabels()
        job.codec_arrays()
    barrier(world)
    if job.precision == "int8" and state["quant_max"] is None:
        state["quant_max"] = job.choose_quant_max()  # every rank alike: epoch 0 is deterministic
        if rank == 0:
            save_state(work, state)
    for k, (first, last) in enumerate(chunks):
        if k % world != rank:
            continue
        if fs.is_file(work / distance_file_name(first, last)):
            resumed += 1
            continue
        job.compute_chunk(first, last, state["quant_max"])
        computed += 1
        kept.note(str(work), f"{resumed + computed} of {len(chunks)} epoch files in {work}")
    barrier(world)
    if rank == 0:
        state["phase"] = "installing"
        save_state(work, state)
    return resumed, computed


def amp_key(amp: str | None) -> str:
    """How ``amp`` is recorded: "fp32" when the teacher ran without autocast."""
    return "fp32" if amp in (None, "none", "fp32") else str(amp)


def _start(st: Store, work: Path, args: dict[str, Any], quant_max: float | None, overwrite: bool, rank: int,
           world: int) -> dict[str, Any]:
    """The job's state: resumed when ``work`` holds one with the same arguments, else a fresh one.

    Rank 0 decides (and creates the folder); the other ranks read what it wrote.
    """
    state: dict[str, Any] | None = None
    if rank == 0:
        state = load_state(work, args, "relabel")
        m = st.manifest
        has_labels = bool(m.labels.get("distances") or m.labels.get("softlabels"))
        if state is None:
            if has_labels and not overwrite:
                raise LabelsExistError(st.path, "store already has labels (distances or soft labels); use --overwrite "
                                                "to replace them")
            mkdir_own(work, parents=False)
            state = {"args": args, "quant_max": quant_max, "phase": "computing"}
            save_state(work, state)
    barrier(world)
    if rank != 0:
        state = load_state(work, args, "relabel")
    if state is None:  # rank 0 always has one here
        raise NrrError(work, "rank 0 wrote no relabel state (did it fail?)")
    return state


def _finish(st: Store, m: Any, work: Path, chunks: list[tuple[int, int]], args: dict[str, Any], state: dict[str, Any],
            teacher: Teacher, recipe: AugRecipe, job: TeacherPass, dev: torch.device) -> dict[str, Any]:
    """Install the finished files and rewrite the manifest (rank 0 only)."""
    epochs, precision, mode = args["epochs"], args["precision"], args["mode"]
    full_softlabels = args["full_softlabels"]
    files = install_chunks(st.path, work, chunks)
    version = label_version(args)  # zarr labels under new names: a reader of the old manifest never mixes
    if full_softlabels:
        files.update(install_softlabels(st.path, work, version))
    if job.codecs:
        prior = write_prior(work, chunks, m.num_classes, codecs_dir(version))
        files.update(install_codecs(st.path, work, version))
    labels = {k: v for k, v in m.labels.items() if k not in ("distances", "softlabels", "codecs", "codecs_prior")}
    labels["distances"] = distances_section(chunks, precision, mode, state["quant_max"])
    if full_softlabels:
        labels["softlabels"] = softlabels_section((epochs, m.num_images, m.num_classes),
                                                  (1, job.block_of_softlabels, m.num_classes),
                                                  path=softlabels_path(version))
    labels["codecs"] = codecs_section(parse_codecs(args["codecs"]), epochs, m.num_images, m.num_classes,
                                      job.block_of_softlabels, codecs_dir(version))
    if job.codecs:
        labels["codecs_prior"] = prior
    method = dict(m.method)
    method["relabel"] = {**{k: args[k] for k in ("epochs", "precision", "mode", "full_softlabels", "epochs_per_file",
                                                 "batch_size", "amp", "codecs")},
                         "quant_max": state["quant_max"], "device": dev.type}
    old = [f.path for f in m.files if f.kind in LABEL_FILE_KINDS]
    updated = update_store(st.path, kinds=files, remove_prefixes=tuple(old), sections={
        "labels": labels, "augmentation": recipe.to_dict(), "teacher": teacher_record(teacher),
        "normalization": m.normalization or {"mean": list(teacher.mean), "std": list(teacher.std)},
        "method": method,
    })
    shutil.rmtree(work)
    kept.clear(str(work))
    distance_files = [f for f in updated.files if f.kind == "distances"]
    total_bytes = sum(f.bytes for f in distance_files)
    views = epochs * m.num_images
    per_codec = codec_bytes(updated)
    return {"files": [f.path for f in distance_files], "distance_bytes": total_bytes,
            "bytes_per_view": total_bytes / max(1, views), "clipped": job.clipped,
            "codec_bytes_per_view": {k: v / max(1, views) for k, v in per_codec.items()}}
