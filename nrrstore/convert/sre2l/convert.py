"""`convert-softlabels --format sre2l`: an SRe2L label folder plus its images -> an explicit-mode store.

The steps, each in its own module: scan the label folder (:mod:`.folder`), write the images store
(:mod:`.images`), replay the order SRe2L visited the images in (:mod:`.orders`), load each batch file
safely (:mod:`.unpickle`) and turn each epoch into store rows (:mod:`.rows`), several epochs at once
in a process pool (:mod:`.pool`); this module runs them, writes the distance files through
:mod:`nrrstore.format.distances`, and installs the store.

Streaming and resume: memory holds one epoch per worker process (its distances, view columns and,
with ``keep_full``, its [N, C] soft labels), whatever the number of epochs. Epochs are written in
chunks of ``epochs_per_file`` (one Parquet file each, one row group per epoch). Work lives in the
hidden sibling ``.convert-<name>`` (images store first, then the finished chunk files); a killed run
rerun with the same arguments continues at the first unfinished chunk. A bad input (an `NrrError`)
removes the work folder: nothing half-written is left behind.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nrrstore.convert.sre2l.folder import LabelFolder, scan_label_folder
from nrrstore.convert.sre2l.images import ImageSource, open_image_source, write_images
from nrrstore.convert.sre2l.orders import DEFAULT_SAMPLER_SEED, file_orders, sampler_orders
from nrrstore.convert.sre2l.pool import EpochPool
from nrrstore.convert.sre2l.rows import EpochWork
from nrrstore.convert.sre2l.unpickle import load_batch
from nrrstore.errors import NrrError, os_errors_name, os_problem, staged_as
from nrrstore.format import fs, quant
from nrrstore.format.atomic import file_sha256, mkdir_own, own_path
from nrrstore.format.codecs import (
    Codec,
    codecs_section,
    codecs_to_write,
    create_codec_arrays,
    parse_codec,
    parse_codecs,
)
from nrrstore.format.distances import (
    DEFAULT_EPOCHS_PER_FILE,
    DistanceFile,
    check_precision,
    distances_section,
    epoch_chunks,
)
from nrrstore.format.layout import CODECS_DIR, LABELS_DIR, distance_path, is_store
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_not_inside
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import create_store_softlabels, softlabels_section
from nrrstore.format.update import update_store
from nrrstore.format.workstate import load_state, remove_interrupted_writes, save_state
from nrrstore.format.writer import check_output_dir, staged_store
from nrrstore.ordered_pool import check_workers
from nrrstore.progress import Progress
from nrrstore.replay.recipe import AugRecipe
from nrrstore.sources.encode import MODES as IMAGE_MODES
from nrrstore.sources.shards import load_class_names

WORK_PREFIX = ".convert-"
POOL_MIN_FILES = 256


def convert_sre2l(
    labels_dir: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sampler_seed: int = DEFAULT_SAMPLER_SEED,
    order_file: str | os.PathLike[str] | None = None,
    temperature: float = 1.0,
    keep_full: bool = False,
    precision: str = "fp16",
    quant_max: float | None = None,
    epochs_per_file: int = DEFAULT_EPOCHS_PER_FILE,
    size: int | None = None,
    mode: str = "keep",
    normalization: Any = "auto",
    classes: Sequence[str] | str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    epochs: int | None = None,
    teacher: Any = None,
    replay_sample: int = 256,
    codecs: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert an SRe2L soft-label folder plus its images into an explicit-mode store at ``out``; ``codecs``: label
    codecs to write from the same logits besides DBR (``"topk:2,dbrc:1"``, :mod:`nrrstore.format.codecs`).

    ``epochs``: convert only the first ``epochs`` (complete) epochs of a partly written folder.
    ``teacher``: the teacher that made the labels; once the first file of epochs is converted, a
    sample of ``replay_sample`` views is replayed with it (`nrrstore.labels.replay_check`) and the
    conversion is refused when the stored distances do not describe the views (a wrong sampler
    seed or order file, a wrong ``size``, another image folder), naming the measured gap.

    ``size``: the views' output size (default: the image height; SRe2L trains at its image size).
    ``mode``: ``keep`` the images' channels, or make them ``L``/``RGB`` (torchvision's ImageFolder
    feeds RGB). ``normalization``: the teacher input normalization the store records (``"auto"``:
    ImageNet's for RGB images, none for grey). ``classes``: names (or a file of names) instead of
    the folder names / the shards' ``classes.txt``. ``workers``: processes converting epochs in
    parallel (default: one per CPU up to 4, for folders of at least ``POOL_MIN_FILES`` files; 0 or
    1: in this process); the output does not depend on it. Returns a summary dict.
    """
    t0 = time.perf_counter()
    out = Path(out)
    quant_max = _check_options(temperature, precision, mode, epochs_per_file, shard_size, quant_max, workers)
    if isinstance(classes, (str, os.PathLike)):
        classes = load_class_names(classes)
    folder = scan_label_folder(labels_dir, epochs)
    if workers is None:  # a pool costs a fork and some copying: worth it for real folders only
        workers = min(4, os.cpu_count() or 1) if folder.epochs * folder.batches >= POOL_MIN_FILES else 0
    first = load_batch(folder.path(0, 0))
    batch, num_classes = len(first), int(first.logits.shape[1])
    keep_full, array_codecs = _codec_options(codecs, bool(keep_full), num_classes)  # "full" = keep_full
    src = open_image_source(images, classes)
    _check_inputs_and_output(folder, src, Path(images), out, overwrite, batch, num_classes)

    order_digest = _sha256_file(order_file) if order_file is not None else None
    args = {
        "labels": str(folder.root.resolve()), "labels_digest": folder.digest, "images": os.path.abspath(src.spec),
        "images_digest": src.digest, "sampler_seed": None if order_file else int(sampler_seed),
        "order_file_sha256": order_digest, "temperature": float(temperature), "keep_full": bool(keep_full),
        "precision": precision, "quant_max": quant_max, "epochs_per_file": epochs_per_file, "size": size,
        "mode": mode, "normalization": normalization, "classes": list(src.classes) if src.classes else None,
        "shard_size": shard_size, "codecs": array_codecs,
    }
    work = own_path(out.with_name(f"{WORK_PREFIX}{out.name}"))  # a planted link is refused, never followed
    with output_lock(out), os_errors_name(out):  # before the work folder: a live converter's state is its own
        state = load_state(work, args, "conversion")
        if state is None:
            mkdir_own(work)
            state = {"args": args, "mix": "none", "quant_max": quant_max, "logits_dtypes": []}
            save_state(work, state)
        try:
            return _run(folder, src, out, work, state, batch, num_classes, t0, order_file, overwrite, workers,
                        progress, teacher, replay_sample)
        except (NrrError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)  # a bad input: resuming would meet it again
            if isinstance(exc, NrrError) and staged_as(exc, work / "store", out) is not exc:
                raise staged_as(exc, work / "store", out) from None
            raise


def _codec_options(codecs: str | Sequence[str] | None, keep_full: bool, num_classes: int) -> tuple[bool, list[str]]:
    """``(keep the full soft labels, the array codecs to write)`` of a ``codecs`` request."""
    wanted = codecs_to_write(codecs, keep_full, num_classes)
    return Codec("full") in wanted, [c.name for c in wanted if c.has_arrays]


def _check_inputs_and_output(folder: LabelFolder, src: ImageSource, images: Path, out: Path, overwrite: bool,
                             batch: int, num_classes: int) -> None:
    """The output outside both inputs and free to write; the images as many, and of as many classes, as the
    label files describe."""
    check_not_inside(out, {"LABELS": folder.root, "--images": images}, "--out")
    check_output_dir(out, overwrite)
    if src.count is not None:
        _check_count(src.count, folder, batch, images)
    if src.classes is not None and len(src.classes) != num_classes:
        raise NrrError(folder.path(0, 0), f"logits have {num_classes} classes, but the images have {len(src.classes)} "
                                          f"classes ({src.spec})")


def _check_options(temperature: Any, precision: str, mode: str, epochs_per_file: Any, shard_size: Any,
                   quant_max: float | None, workers: Any) -> float | None:
    """Refuse bad options before reading any input; returns the checked int8 scale."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise NrrError(None, f"temperature must be a positive number, got {temperature!r}")
    check_precision(precision)
    if mode not in IMAGE_MODES:
        raise NrrError(None, f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
    for name, v in (("epochs per file", epochs_per_file), ("shard size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise NrrError(None, f"{name} must be a positive integer, got {v!r}")
    if quant_max is not None:
        quant_max = quant.check_max(quant_max)
    if workers is not None:
        check_workers(workers)
    return quant_max


def _run(folder: LabelFolder, src: ImageSource, out: Path, work: Path, state: dict[str, Any], batch: int,
         num_classes: int, t0: float, order_file: Any, overwrite: bool, workers: int,
         progress: Progress | None, teacher: Any = None, replay_sample: int = 256) -> dict[str, Any]:
    args = state["args"]
    store_dir = work / "store"
    t_images, c_images = time.perf_counter(), time.process_time()
    if not is_store(store_dir):
        write_images(src, store_dir, folder, batch, num_classes, args, progress)
    t_labels, c_labels = time.perf_counter(), time.process_time()
    st = Store(store_dir)
    m = st.manifest
    n, height, width = m.num_images, m.image.height, m.image.width
    _check_count(n, folder, batch, Path(src.spec))
    size = args["size"] if args["size"] is not None else height
    if args["size"] is None and height != width:
        raise NrrError(src.spec, f"images are {height}x{width}, not square: give the views' output size (--size)")
    orders = file_orders(order_file, n, folder.epochs) if order_file is not None else sampler_orders(n, args["sampler_seed"])
    work_of_epoch = EpochWork(folder, st.labels(), height, width, size, num_classes, batch,
                              float(args["temperature"]), bool(args["keep_full"]), tuple(args.get("codecs", ())))
    chunks = epoch_chunks(folder.epochs, args["epochs_per_file"])
    resumed = computed = 0
    replay = None
    remove_interrupted_writes(work)  # a killed run's half-written zarr chunks: their epochs are redone below
    with EpochPool(work_of_epoch, workers) as pool:
        labels = _LabelWriter(folder, st, state, work, pool, progress)
        for k, (a, b) in enumerate(chunks):
            if labels.done(a, b):
                labels.skip(a, b, orders)
                resumed += 1
            else:
                labels.chunk(a, b, orders)
                computed += 1
            if teacher is not None and replay is None:  # after the first file: fail early, not after all epochs
                replay = _check_replay(st, folder, state, chunks[:k + 1], size, num_classes, batch, teacher,
                                       replay_sample)
    t_finish, c_finish = time.perf_counter(), time.process_time()
    summary = _finish(st, folder, src, out, work, state, chunks, size, num_classes, batch, overwrite)
    views = folder.epochs * n
    summary.update({"replay": replay,
        "images": n, "epochs": folder.epochs, "batch_size": batch, "num_classes": num_classes, "views": views,
        "bytes_per_view": summary["distance_bytes"] / max(1, views), "chunks_resumed": resumed,
        "chunks_computed": computed, "label_files": folder.epochs * folder.batches,
        "seconds": round(time.perf_counter() - t0, 3), "workers": workers,
        "phase_seconds": {"images": round(t_labels - t_images, 3), "labels": round(t_finish - t_labels, 3),
                          "finish": round(time.perf_counter() - t_finish, 3)},
        # CPU of this process only (worker processes not included): wall time misleads on a busy machine
        "phase_cpu_seconds": {"images": round(c_labels - c_images, 3), "labels": round(c_finish - c_labels, 3),
                              "finish": round(time.process_time() - c_finish, 3)},
    })
    return summary


def _check_count(n: int, folder: LabelFolder, batch: int, images: Path) -> None:
    need = math.ceil(n / batch)
    if need != folder.batches:
        raise NrrError(images, f"{n} images make {need} batch(es) of {batch}, but {folder.root / 'epoch_0'} holds "
                               f"{folder.batches} batch file(s) ({(folder.batches - 1) * batch + 1}.."
                               f"{folder.batches * batch} images)")


class _LabelWriter:
    """Writes the converted epochs into the store being built: one distance file per chunk of epochs,
    the soft labels with ``keep_full``, and the job's state after each chunk (the resume point)."""

    def __init__(self, folder: LabelFolder, st: Store, state: dict[str, Any], work: Path, pool: EpochPool,
                 progress: Progress | None) -> None:
        self.folder, self.st, self.state, self.work, self.pool, self.progress = folder, st, state, work, pool, progress
        self.n = st.num_images
        self.files_done = 0
        self.total_files = folder.epochs * folder.batches
        self.soft = None
        if state["args"]["keep_full"]:
            self.soft = create_store_softlabels(st.path, folder.epochs, self.n, pool.work.num_classes,
                                                _soft_block(self.n))
        c = pool.work.num_classes
        self.codecs = {k.name: create_codec_arrays(st.path / LABELS_DIR, k, folder.epochs, self.n, c, _soft_block(self.n))
                       for k in parse_codecs(state["args"].get("codecs") or [], c)} if state["args"].get("codecs") else {}

    def done(self, first: int, last: int) -> bool:
        return fs.is_file(self.st.path / distance_path(first, last))

    def skip(self, first: int, last: int, orders: Iterator[np.ndarray]) -> None:
        """A chunk converted by an earlier run: its orders are drawn all the same (the sampler advances)."""
        for _ in range(first, last + 1):
            next(orders)
        self.files_done += (last - first + 1) * self.folder.batches

    def chunk(self, first: int, last: int, orders: Iterator[np.ndarray]) -> None:
        args = self.state["args"]
        epochs = self.pool.epochs(first, last, orders)
        try:
            with DistanceFile(self.st.path / distance_path(first, last), self.n, args["precision"], explicit=True,
                              quant_max=self.state["quant_max"]) as table:
                for rows in epochs:
                    for mix, where in rows.mixes:
                        self._mix_mode(mix, where)
                    self.state["logits_dtypes"] = sorted(set(self.state["logits_dtypes"]) | set(rows.dtypes))
                    if self.soft is not None:
                        self.soft[rows.epoch] = rows.soft
                    for name, fields in rows.codecs.items():
                        codec = parse_codec(name)
                        for f, values in codec.store_values(fields["ids"], fields["values"]).items():
                            self.codecs[name][f][rows.epoch] = values
                    table.write_epoch(rows.epoch, rows.d_org, rows.d_aug, rows.cols)
                    self.state["quant_max"] = table.quant_max  # int8: chosen from the first epoch converted
                    self.files_done += self.folder.batches
                    if self.progress:
                        self.progress("convert label files", self.files_done, self.total_files)
        finally:
            epochs.close()
        save_state(self.work, self.state)

    def _mix_mode(self, mix: str, path: str) -> None:
        have = self.state["mix"]
        if mix == "none" or mix == have:
            return
        if have != "none":
            names = {"cutmix": "CutMix", "mixup": "MixUp"}
            raise NrrError(path, f"uses {names[mix]} but earlier files use {names[have]}; a store replays one mixing mode")
        self.state["mix"] = mix


def _soft_block(num_images: int) -> int:
    """Images per soft-label chunk (one chunk row of the zarr array)."""
    return max(1, min(num_images, 1024))


def _record_labels(st: Store, folder: LabelFolder, state: dict[str, Any], chunks: list[tuple[int, int]], size: int,
                   num_classes: int, batch: int, soft: bool) -> tuple[dict[str, str], AugRecipe]:
    """List the distance files of ``chunks`` (and the soft labels) in the work store's manifest."""
    args = state["args"]
    m = st.manifest
    section = distances_section(chunks, args["precision"], "explicit", state["quant_max"])
    labels: dict[str, Any] = {"distances": section}
    kinds = {f["path"]: "distances" for f in section["files"]}
    if soft:
        shape = (folder.epochs, m.num_images, num_classes)
        labels["softlabels"] = softlabels_section(shape, (1, _soft_block(m.num_images), num_classes),
                                                  args["temperature"])
        kinds[labels["softlabels"]["path"]] = "softlabels"
    if args.get("codecs"):
        labels["codecs"] = codecs_section(codecs_to_write(args["codecs"], soft, num_classes), folder.epochs,
                                          m.num_images, num_classes, _soft_block(m.num_images))
        kinds[CODECS_DIR] = "codecs"
    recipe = AugRecipe(size=size, mix=state["mix"], seed=0)
    method = {"convert": {
        "from": "sre2l", "temperature": args["temperature"], "sampler_seed": args["sampler_seed"],
        "order_file_sha256": args["order_file_sha256"], "batch_size": batch, "epochs": folder.epochs,
        "logits_dtypes": sorted(state["logits_dtypes"]), "keep_full": args["keep_full"],
        "precision": args["precision"], "epochs_per_file": args["epochs_per_file"], "image_mode": args["mode"],
        "crop_rounding": "PIL Image.crop: rint(fraction * side), half to even, box corners in float64",
        "distances_from": "the stored logits (not recomputed from the images)",
    }}
    update_store(st.path, kinds=kinds, sections={"labels": labels, "augmentation": recipe.to_dict(), "method": method})
    return kinds, recipe


def _check_replay(st: Store, folder: LabelFolder, state: dict[str, Any], chunks: list[tuple[int, int]], size: int,
                  num_classes: int, batch: int, teacher: Any, sample: int) -> dict[str, Any]:
    """Replay views of the converted epochs so far with the teacher; refuse labels that do not fit them."""
    from nrrstore.labels.replay_check import replay_check

    _record_labels(st, folder, state, chunks, size, num_classes, batch, soft=False)
    report = replay_check(Store(st.path), teacher, sample=sample)
    if report.problem:
        raise NrrError(folder.root, report.problem)
    return report.to_dict()


def _finish(st: Store, folder: LabelFolder, src: ImageSource, out: Path, work: Path, state: dict[str, Any],
            chunks: list[tuple[int, int]], size: int, num_classes: int, batch: int, overwrite: bool) -> dict[str, Any]:
    args = state["args"]
    kinds, recipe = _record_labels(st, folder, state, chunks, size, num_classes, batch, bool(args["keep_full"]))
    m = Store(st.path).manifest
    stored = (m.source.get("images") or {}).get("stored")
    staged_store(out, overwrite, path=st.path).commit()
    shutil.rmtree(work, ignore_errors=True)
    files = sorted(kinds)
    distance_bytes = sum(f.bytes for f in m.files if f.kind == "distances")
    return {"store": str(out), "mix": state["mix"], "precision": args["precision"], "files": files,
            "distance_bytes": distance_bytes, "quant_max": state["quant_max"],
            "logits_dtypes": sorted(state["logits_dtypes"]), "source_bytes": folder.bytes,
            "images_bytes": src.bytes, "images_stored": stored, "keep_full": args["keep_full"],
            "augmentation": recipe.to_dict()}


def _sha256_file(path: str | os.PathLike[str]) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise NrrError(path, f"cannot read: {os_problem(exc)}") from None
