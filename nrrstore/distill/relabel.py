"""DBR relabeling: the teacher's two distances for every (image, epoch) view of a finished store.

Every view is rendered from the images *as stored* (decoded from the shards) by the same
:func:`~nrrstore.train.augment.render_batch` the student's loader uses, so the student later sees
exactly the pixels these numbers were computed on.

Streaming and resume: epochs are processed in chunks of ``epochs_per_file``; a chunk becomes one
Parquet file with one row group per epoch, written under a temporary name and renamed when complete.
Work in progress lives in ``STORE/.relabel/`` (the arguments in ``state.json`` and the finished
chunk files); a killed job rerun with the same arguments continues with the first unfinished chunk
and produces byte-identical files. When every chunk is done the files move into ``labels/``, the
manifest is rewritten by :func:`~nrrstore.format.update.update_store` (last), and the work folder is
removed, so a finished store holds nothing that ``verify`` does not know about. Memory is bounded
by one epoch's distances plus a decoded-image cache (``cache_mb``), whatever the number of epochs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nrrstore.errors import NrrError, ResumeMismatchError, os_problem
from nrrstore.format import quant
from nrrstore.format.atomic import tmp_name
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import check_writable
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import (
    SOFTLABELS_PATH,
    create_softlabels,
    softlabels_section,
)
from nrrstore.format.tables import DISTANCE_TYPES, distance_schema
from nrrstore.format.update import update_store
from nrrstore.format.workstate import load_state, save_state
from nrrstore.models.checkpoint import Teacher, load_teacher
from nrrstore.train.augment import (
    AugRecipe,
    ViewBatch,
    epoch_columns,
    epoch_plan,
    render_batch,
)
from nrrstore.train.loader import ImageBlocks, RemoteStore, open_store, store_recipe
from nrrstore.train.losses import distances

Progress = Callable[[str, int, "int | None"], None]
WORK_DIR = ".relabel"
MODES = ("seeded", "explicit")
DEFAULT_EPOCHS_PER_FILE = 100


def chunk_name(first: int, last: int) -> str:
    return f"distances-e{first:04d}-e{last:04d}.parquet"


def parquet_options(precision: str) -> dict[str, Any]:
    """Column encodings that make a view cost little more than its two values (measured: P3).

    ``epoch`` (constant per row group) and ``image`` (0..N-1) are delta-encoded to almost nothing;
    statistics are written for ``epoch`` only (readers find an epoch's row group by them); int8
    codes and fp32 values are byte-stream-split so zstd sees their high bytes together (fp16 gains
    nothing from it on real distances).
    """
    enc: dict[str, str] = {"epoch": "DELTA_BINARY_PACKED", "image": "DELTA_BINARY_PACKED"}
    if precision != "fp16":
        enc.update(d_org="BYTE_STREAM_SPLIT", d_aug="BYTE_STREAM_SPLIT")
    return {"compression": "zstd", "write_statistics": ["epoch"], "store_schema": False,
            "use_dictionary": False, "column_encoding": enc}


def default_recipe(store: Store, teacher: Teacher, **overrides: Any) -> AugRecipe:
    """The store's recipe (else ``AugRecipe(size=teacher input size, seed=0)``) with ``overrides``."""
    m = store.manifest
    base = store_recipe(m, store.path / "manifest.json").to_dict() if m.augmentation else \
        AugRecipe(size=teacher.image_size, seed=0).to_dict()
    base.update({k: v for k, v in overrides.items() if v is not None})
    return AugRecipe.from_dict(base)


def teacher_section(teacher: Teacher) -> dict[str, Any]:
    return {"arch": teacher.arch, "arch_kwargs": dict(teacher.arch_kwargs), "sha256": teacher.sha256,
            "num_classes": teacher.num_classes, "classes": list(teacher.classes),
            "in_channels": teacher.in_channels, "image_size": teacher.image_size,
            "normalization": {"mean": list(teacher.mean), "std": list(teacher.std)}}


def _store_job(job: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run ``job(store, ...)`` holding the store's write lock; a failure leaves no empty work folder.

    Finished chunks are kept for a resume, and the error then says how to resume or discard them.
    """

    @functools.wraps(job)
    def run(store: Store | str | os.PathLike[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        root = store.path if isinstance(store, Store) else store
        if isinstance(root, str) and root.startswith(("http://", "https://")):
            return job(store, *args, **kwargs)  # refused inside: a URL is not written to
        root = Path(root)
        if root.is_dir():
            check_writable(root)
        with output_lock(root):
            try:
                return job(store, *args, **kwargs)
            except BaseException as exc:
                stopped = _stopped(exc, root, root / WORK_DIR)
                if stopped is exc:
                    raise
                raise stopped from None

    return run


def _stopped(exc: BaseException, root: Path, work: Path) -> BaseException:
    if isinstance(exc, OSError):
        exc = NrrError(root, os_problem(exc))
    finished = sorted(work.glob("distances-*.parquet")) if work.is_dir() else []
    if not finished:
        shutil.rmtree(work, ignore_errors=True)
        return exc
    if isinstance(exc, NrrError) and not isinstance(exc, ResumeMismatchError):
        return NrrError(exc.path, f"{exc.problem}; {len(finished)} finished chunk file(s) are kept in {work}: rerun the "
                                  f"same relabel to resume, or delete {work} to discard them")
    return exc


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
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write DBR distances for ``epochs`` epochs of ``store`` (and full soft labels if asked).

    ``recipe`` defaults to the store's own (see :func:`default_recipe`) with ``seed`` as its
    augmentation seed when given; ``mode="explicit"`` also
    stores each view's parameters as columns. ``precision="int8"`` quantizes with scale
    ``quant_max`` (default: 1.25 x the largest distance of epoch 0, see :mod:`nrrstore.format.quant`).
    ``batch_size`` and ``epochs_per_file`` change the bytes written (teacher batches, file split),
    so a resumed job must repeat them; the device is not checked.
    """
    t0 = time.perf_counter()
    st = open_store(store)
    if isinstance(st, RemoteStore):
        raise NrrError(st.path, "relabel writes into the store: give a local folder, not a URL")
    m = st.manifest
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher, device)
    if precision not in DISTANCE_TYPES:
        raise NrrError(None, f"unknown precision {precision!r}; use one of {', '.join(DISTANCE_TYPES)}")
    if mode not in MODES:
        raise NrrError(None, f"unknown distance mode {mode!r}; use seeded or explicit")
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
    recipe = recipe or default_recipe(st, teacher, seed=seed)
    if recipe.size != teacher.image_size:
        raise NrrError(teacher.spec, f"views are {recipe.size} px (augmentation size) but the teacher takes "
                                     f"{teacher.image_size} px")

    work = st.path / WORK_DIR
    args = {
        "teacher_sha256": teacher.sha256, "epochs": epochs, "recipe": recipe.to_dict(), "precision": precision,
        "mode": mode, "full_softlabels": bool(full_softlabels), "epochs_per_file": epochs_per_file,
        "batch_size": batch_size, "quant_max": quant_max, "num_images": m.num_images,
        "index_sha256": getattr(m.file("index.parquet"), "sha256", None),
    }
    state = load_state(work, args, "relabel")
    has_labels = bool(m.labels.get("distances") or m.labels.get("softlabels"))
    if state is None:
        if has_labels and not overwrite:
            raise NrrError(st.path, "store already has labels (distances or soft labels); pass overwrite=True "
                                    "(--overwrite) to replace them")
        work.mkdir(exist_ok=True)
        state = {"args": args, "quant_max": quant_max, "phase": "computing"}
        save_state(work, state)

    chunks = [(a, min(a + epochs_per_file, epochs) - 1) for a in range(0, epochs, epochs_per_file)]
    job = _Job(st, teacher, recipe, epochs, precision, mode, full_softlabels, batch_size, device, work, cache_mb,
               progress)
    resumed = computed = 0
    if state["phase"] == "computing":
        for first, last in chunks:
            if (work / chunk_name(first, last)).is_file():
                resumed += 1
                continue
            job.compute_chunk(first, last, state)
            computed += 1
        state["phase"] = "installing"
        save_state(work, state)
    files = _install(st, work, chunks, full_softlabels)
    section: dict[str, Any] = {
        "files": [{"path": f"labels/{chunk_name(a, b)}", "first_epoch": a, "last_epoch": b} for a, b in chunks],
        "epochs": epochs, "precision": precision, "mode": mode,
    }
    if precision == "int8":
        section["quant"] = {"max": state["quant_max"]}
    labels = {k: v for k, v in m.labels.items() if k not in ("distances", "softlabels")}
    labels["distances"] = section
    if full_softlabels:
        labels["softlabels"] = softlabels_section((epochs, m.num_images, m.num_classes),
                                                  (1, job.block_of_softlabels, m.num_classes))
    method = dict(m.method)
    method["relabel"] = {**{k: args[k] for k in ("epochs", "precision", "mode", "full_softlabels", "epochs_per_file",
                                                 "batch_size")}, "quant_max": state["quant_max"]}
    old = [f.path for f in m.files if f.kind in ("distances", "softlabels")]
    update_store(st.path, kinds=files, remove_prefixes=tuple(old), sections={
        "labels": labels, "augmentation": recipe.to_dict(), "teacher": teacher_section(teacher),
        "normalization": m.normalization or {"mean": list(teacher.mean), "std": list(teacher.std)},
        "method": method,
    })
    _remove_unlisted(st.path, old, files)
    shutil.rmtree(work)
    total_bytes = sum((st.path / p).stat().st_size for p in files if p.endswith(".parquet"))
    views = epochs * m.num_images
    return {
        "store": str(st.path), "epochs": epochs, "images": m.num_images, "views": views,
        "precision": precision, "mode": mode, "files": sorted(p for p in files if p.endswith(".parquet")),
        "distance_bytes": total_bytes, "bytes_per_view": total_bytes / max(1, views),
        "softlabels": full_softlabels, "quant_max": state["quant_max"], "clipped": job.clipped,
        "chunks_resumed": resumed, "chunks_computed": computed, "augmentation": recipe.to_dict(),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# -- the work itself ----------------------------------------------------------------------------------
def teacher_distances(teacher: Teacher, views: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor,
                      lam: torch.Tensor, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_org, d_aug, logits)`` of rendered views ([0, 1] pixels): exactly what relabel stores per view.

    One function for relabel and for the replay check (`nrrstore.distill.replay`), so a check
    recomputes distances the way they were made.
    """
    logits = teacher.model(teacher.normalize(views.to(device))).float()
    d_org, d_aug = distances(logits, y.to(device), y_partner.to(device), lam.to(device))
    return d_org, d_aug, logits


class _Job:
    def __init__(self, st: Store, teacher: Teacher, recipe: AugRecipe, epochs: int, precision: str, mode: str,
                 soft: bool, batch_size: int, device: str | torch.device, work: Path, cache_mb: int,
                 progress: Progress | None) -> None:
        self.st, self.teacher, self.recipe, self.epochs = st, teacher, recipe, epochs
        self.precision, self.mode, self.soft = precision, mode, soft
        self.batch_size, self.work, self.progress = batch_size, work, progress
        self.device = torch.device(device)
        self.n = st.num_images
        g = recipe.group_size
        # A block is whole partner groups, so every partner of a block's images is in the block.
        self.block = g * max(1, batch_size // g)
        self.block_of_softlabels = min(self.block, self.n)
        self.images = ImageBlocks(st, self.block, cache_mb)
        self.labels = st.labels()
        self.clipped = 0
        self.total_views = epochs * self.n
        teacher.model.to(self.device).eval()

    @torch.inference_mode()
    def epoch(self, epoch: int, soft_out: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
        n, bs = self.n, self.batch_size
        plan = epoch_plan(self.recipe, epoch, n)
        cols = explicit = None
        if self.mode == "explicit":
            m = self.st.manifest
            cols = epoch_columns(self.recipe, epoch, n, m.image.height, m.image.width)
            explicit = ViewBatch.from_columns(cols)
        d_org = np.empty(n, np.float32)
        d_aug = np.empty(n, np.float32)
        labels = torch.from_numpy(self.labels)
        for b in range(math.ceil(n / self.block)):
            start, stop = b * self.block, min((b + 1) * self.block, n)
            imgs = self.images.images(np.arange(start, stop))
            probs = []
            for s in range(start, stop, bs):
                idx = np.arange(s, min(s + bs, stop))
                views, lam, partner = render_batch(imgs, idx, None if explicit else plan, self.recipe, epoch,
                                                   explicit=explicit)
                a, c, logits = teacher_distances(self.teacher, views, labels[idx], labels[partner], lam,
                                                 self.device)
                d_org[idx], d_aug[idx] = a.cpu().numpy(), c.cpu().numpy()
                if soft_out is not None:
                    probs.append(torch.softmax(logits, dim=1).to(torch.float16).cpu().numpy())
            if soft_out is not None:
                soft_out[epoch, start:stop, :] = np.concatenate(probs)
            if self.progress:
                self.progress("relabel views", epoch * n + stop, self.total_views)
        return d_org, d_aug, cols

    def compute_chunk(self, first: int, last: int, state: dict[str, Any]) -> None:
        soft_out = None
        if self.soft:
            soft_out = create_softlabels(self.work / "softlabels.zarr", self.epochs, self.n,
                                         self.st.manifest.num_classes, self.block_of_softlabels)
        path = self.work / chunk_name(first, last)
        tmp = tmp_name(path)
        schema = distance_schema(self.precision, self.mode == "explicit")
        writer = pq.ParquetWriter(tmp, schema, **parquet_options(self.precision))
        try:
            for e in range(first, last + 1):
                d_org, d_aug, cols = self.epoch(e, soft_out)
                writer.write_table(self._table(e, d_org, d_aug, cols, state, schema), row_group_size=max(1, self.n))
            writer.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # on a full disk closing fails too; the file must still go
                writer.close()
            tmp.unlink(missing_ok=True)
            raise

    def _table(self, epoch: int, d_org: np.ndarray, d_aug: np.ndarray, cols: dict[str, np.ndarray] | None,
               state: dict[str, Any], schema: pa.Schema) -> pa.Table:
        if self.precision == "int8":
            if state["quant_max"] is None:
                state["quant_max"] = quant.choose_max(np.concatenate([d_org, d_aug]))
                save_state(self.work, state)
            qmax = state["quant_max"]
            self.clipped += int((d_org > qmax).sum() + (d_aug > qmax).sum())
            values = [quant.encode(d_org, qmax), quant.encode(d_aug, qmax)]
        else:
            dtype = np.float16 if self.precision == "fp16" else np.float32
            values = [d_org.astype(dtype), d_aug.astype(dtype)]
        data = {"epoch": np.full(self.n, epoch, np.int32), "image": np.arange(self.n, dtype=np.int32),
                "d_org": values[0], "d_aug": values[1]}
        if cols is not None:
            data.update(cols)
        return pa.table({f.name: pa.array(data[f.name], type=f.type) for f in schema}, schema=schema)


# -- state and installation ---------------------------------------------------------------------------
def _install(st: Store, work: Path, chunks: list[tuple[int, int]], soft: bool) -> dict[str, str]:
    """Move finished files into ``labels/`` (idempotent, so an interrupted install can be rerun)."""
    labels_dir = st.path / "labels"
    labels_dir.mkdir(exist_ok=True)
    files: dict[str, str] = {}
    for a, b in chunks:
        name = chunk_name(a, b)
        if (work / name).is_file():
            os.replace(work / name, labels_dir / name)
        elif not (labels_dir / name).is_file():
            raise NrrError(work, f"relabel state says {name} is finished, but it is missing; delete this folder to start over")
        files[f"labels/{name}"] = "distances"
    if soft:
        dst = st.path / SOFTLABELS_PATH
        if (work / "softlabels.zarr").is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(work / "softlabels.zarr", dst)
        files[SOFTLABELS_PATH] = "softlabels"
    return files


def _remove_unlisted(root: Path, old: list[str], new: dict[str, str]) -> None:
    """Delete replaced label files that the new manifest no longer lists."""
    keep = set(new)
    for rel in old:
        if rel in keep or any(rel.startswith(k.rstrip("/") + "/") for k in keep):
            continue
        p = root / rel
        p.unlink(missing_ok=True)
    soft = root / SOFTLABELS_PATH
    if SOFTLABELS_PATH not in keep and soft.exists():
        shutil.rmtree(soft)
