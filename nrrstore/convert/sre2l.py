"""SRe2L / FKD soft-label folders -> explicit-mode stores (images + DBR distances + view columns).

The input, as SRe2L's relabel step writes it: ``LABELS/epoch_{e}/batch_{b}.tar`` (e, b from 0), each
a ``torch.save``d list ``[coords, flip, partner, lam, box, logits]``:
``coords`` float [B, 4] = (i/H, j/W, h/H, w/W) of each view's RandomResizedCrop; ``flip`` bool [B];
``partner`` int [B], the CutMix/MixUp partner's row in the batch; ``lam`` a float; ``box``
``[x1, y1, x2, y2]`` (x indexes the *height* axis: ``images[:, :, x1:x2, y1:y2]``) or None for
MixUp; ``partner``/``lam``/``box`` are all None without mixing; ``logits`` [B, C], fp16 or fp32.
Which images a batch holds is not in the file: SRe2L draws them with one ``torch.Generator`` seeded
once (42) driving a ``RandomSampler`` over its ImageFolder; epoch e is the sampler's (e+1)-th pass,
cut into batches. We replay that sampler with the installed torch (or read ``--order-file``).

What the store gets, per (epoch, image) row of the distance table:
- the crop in source pixels. SRe2L replays a crop through PIL, whose ``Image.crop`` rounds the box
  ``(j*W, i*H, (j+w)*W, (i+h)*H)`` (fractions times the image size, in float64) half to even; we do
  the same: ``crop_i = rint(fi*H)``, ``crop_h = rint(fi*H + fh*H) - crop_i`` (likewise j, w), so a
  view covers the pixels SRe2L's replay cropped. Crops that leave the image are refused;
- ``flip``; ``partner`` as a store position; ``lam`` as stored (float32); the CutMix box in the
  columns' ``(y1, x1, y2, x2)`` output-pixel convention, i.e. ``box_y = x``, ``box_x = y``;
  zeros for MixUp and unmixed views (which also get ``partner`` = the image itself and lam 1);
- ``d_org``/``d_aug`` from the stored logits (divided by ``temperature``) by
  :func:`nrrstore.train.losses.distances`, with the mixed label ``lam*onehot(y) +
  (1-lam)*onehot(y[partner])``.
The loader re-renders views with its own resize (torch bilinear, antialiased), not PIL's, so the
pixels a student sees are close to, not identical with, the ones the logits were computed on.

Security: the files are pickles. They are read with ``torch.load(weights_only=True)`` admitting, on
top of tensors, only numpy *integer* scalars (and the integer dtypes they need): the box of SRe2L's
CutMix is a list of numpy integers. Anything else is refused before it is built.

Streaming and resume: memory holds one epoch per worker process (its distances, view columns and,
with ``keep_full``, its [N, C] soft labels), whatever the number of epochs; epochs are independent
given their image order, so a process pool converts several at once. They are written in chunks of ``epochs_per_file`` (one
Parquet file each, one row group per epoch). Work lives in the hidden sibling ``.convert-<name>``
(images store first, then the finished chunk files); a killed run rerun with the same arguments
continues at the first unfinished chunk. A bad input (an `NrrError`) removes the work folder: nothing
half-written is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import pickle
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nrrstore.convert.passthrough import AsIs, NotAsIs, read_file
from nrrstore.distill.relabel import (  # relabel's file names and encodings
    chunk_name,
    parquet_options,
)
from nrrstore.errors import NrrError, os_errors_name, os_problem, path_text, staged_as
from nrrstore.format import quant
from nrrstore.format.atomic import file_sha256, is_inside, tmp_name
from nrrstore.format.manifest import MANIFEST_NAME
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import (
    SOFTLABELS_PATH,
    create_softlabels,
    softlabels_section,
)
from nrrstore.format.tables import DISTANCE_TYPES, distance_schema
from nrrstore.format.update import update_store
from nrrstore.format.workstate import load_state, save_state
from nrrstore.format.lock import output_lock
from nrrstore.format.outputs import install_folder
from nrrstore.format.writer import StoreWriter, check_output_dir
from nrrstore.sources.imagefolder import list_imagefolder, read_image_file
from nrrstore.sources.prepare import MODES as IMAGE_MODES
from nrrstore.sources.prepare import convert_mode
from nrrstore.sources.shards import (
    is_remote,
    iter_samples,
    load_class_names,
    read_class_names,
    resolve_shards,
)
from nrrstore.train.augment import EXPLICIT_COLUMNS, AugRecipe, ViewBatch
from nrrstore.train.losses import distances

Progress = Callable[[str, int, "int | None"], None]

WORK_PREFIX = ".convert-"
DEFAULT_SAMPLER_SEED = 42
DEFAULT_EPOCHS_PER_FILE = 100
POOL_MIN_FILES = 256
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_EPOCH_RE = re.compile(r"^epoch_(\d+)$")
_BATCH_RE = re.compile(r"^batch_(\d+)\.tar$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


# -- safe loading ------------------------------------------------------------------------------------
def _int_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it, limited to integer types."""
    dt = np.dtype(*args)
    if dt.kind not in "iu":
        raise pickle.UnpicklingError(f"numpy dtype {dt} is not an integer type")
    return dt


def _int_scalar(dtype: Any, data: Any = None) -> np.integer:
    """``numpy.core.multiarray.scalar`` limited to integer scalars built from their raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iu" or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar is not an integer of its dtype's size")
    return np.frombuffer(data, dtype=dtype)[0]


def _safe_globals() -> list[Any]:
    integer_dtypes = [type(np.dtype(c)) for c in "bhilqBHILQ"]
    return [(_int_dtype, "numpy.dtype"), (_int_scalar, "numpy.core.multiarray.scalar"),
            (_int_scalar, "numpy._core.multiarray.scalar"), *dict.fromkeys(integer_dtypes)]


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` admitting numpy integer scalars; anything else is an `NrrError`.

    The allow-list is torch's process-wide one for the duration of the call, so concurrent loads use
    processes, not threads (another thread's exit from the context would withdraw it).
    """
    try:
        with torch.serialization.safe_globals(_safe_globals()), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NrrError(path, "no such file") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable or refused files
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text) or re.search(r"unrecognized function (.+?)(?: which|$)", text, re.M)
        if found:
            raise NrrError(path, f"refused to load: it needs {found.group(1)}, which an SRe2L label file never "
                                 "holds (only tensors, numbers and numpy integers are admitted)") from None
        inner = re.search(r"WeightsUnpickler error:\s*(\S.*?)\s*(?:\n\n|$)", text, re.S)
        if inner:
            why = " ".join(inner.group(1).split())
            raise NrrError(path, f"refused to load: {why} (only tensors, numbers and "
                                 "numpy integers are admitted)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise NrrError(path, f"not a loadable label file ({type(exc).__name__}: {first})") from None


@dataclass
class BatchRecord:
    """One validated SRe2L batch file."""

    coords: np.ndarray  # float64 [B, 4]: i/H, j/W, h/H, w/W
    flip: np.ndarray  # bool [B]
    partner: np.ndarray | None  # int64 [B], rows of this batch
    lam: float | None
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 (x: height axis)
    logits: torch.Tensor  # [B, C], floating

    def __len__(self) -> int:
        return len(self.flip)

    @property
    def mix(self) -> str:
        return "none" if self.partner is None else ("mixup" if self.box is None else "cutmix")


def _short_repr(v: Any, limit: int = 80) -> str:
    """``repr(v)``, shortened with a visible "..." (a whole tensor would flood the message)."""
    text = " ".join(repr(v).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        return int(v.item())
    return None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.integer)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype != torch.bool:
        return float(v.item())
    return None


def load_batch(path: str | os.PathLike[str]) -> BatchRecord:
    """Load and check one ``batch_{b}.tar``; every problem is an `NrrError` naming the file."""
    obj = safe_torch_load(path)

    def bad(problem: str) -> NrrError:
        return NrrError(path, f"not an SRe2L batch file: {problem}")

    if not isinstance(obj, (list, tuple)) or len(obj) != 6:
        what = f"a {type(obj).__name__} of {len(obj)} items" if isinstance(obj, (list, tuple)) else f"a {type(obj).__name__}"
        raise bad(f"expected a list of 6 items [coords, flip, partner, lam, box, logits], found {what}")
    coords, flip, partner, lam, box, logits = obj
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4 or not coords.is_floating_point():
        raise bad("item 0 (crop coordinates) must be a float tensor [B, 4]")
    n = coords.shape[0]
    if n < 1:
        raise bad("empty batch")
    c = coords.detach().to(torch.float64).numpy()
    if not np.isfinite(c).all():
        raise bad("item 0 (crop coordinates) holds non-finite values")
    if not isinstance(flip, torch.Tensor) or flip.dim() != 1 or flip.shape[0] != n or flip.is_floating_point():
        raise bad(f"item 1 (flip flags) must be a bool tensor [{n}]")
    fl = flip.detach().numpy()
    if fl.dtype != np.bool_:
        if ((fl != 0) & (fl != 1)).any():
            raise bad("item 1 (flip flags) holds values other than 0 and 1")
        fl = fl.astype(np.bool_)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n or not logits.is_floating_point():
        raise bad(f"item 5 (teacher logits) must be a float tensor [{n}, C]")
    if partner is None:
        if lam is not None or box is not None:
            raise bad("partner (item 2) is None but lambda or box (items 3, 4) are not")
        return BatchRecord(c, fl, None, None, None, logits.detach())
    if not isinstance(partner, torch.Tensor) or partner.dim() != 1 or partner.shape[0] != n or partner.is_floating_point() \
            or partner.dtype == torch.bool:
        raise bad(f"item 2 (mix partner index) must be an integer tensor [{n}] or None")
    p = partner.detach().to(torch.int64).numpy()
    if p.min() < 0 or p.max() >= n:
        raise bad(f"item 2 (mix partner index) must lie in 0..{n - 1}")
    lam_f = _as_float(lam)
    if lam_f is None or not 0.0 <= lam_f <= 1.0:
        raise bad(f"item 3 (lambda) must be a number in [0, 1], found {_short_repr(lam)}")
    bx = None
    if box is not None:
        vals = [_as_int(v) for v in box] if isinstance(box, (list, tuple)) and len(box) == 4 else [None]
        if any(v is None for v in vals):
            raise bad("item 4 (CutMix box) must be None or 4 integers [x1, y1, x2, y2]")
        bx = (vals[0], vals[1], vals[2], vals[3])  # type: ignore[assignment]
    return BatchRecord(c, fl, p, lam_f, bx, logits.detach())


def crop_pixels(coords: np.ndarray, height: int, width: int, where: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """(crop_i, crop_j, crop_h, crop_w) int64 from SRe2L fractions, rounded as PIL's crop does."""
    fi, fj, fh, fw = (coords[:, k].astype(np.float64) for k in range(4))
    top, left = np.rint(fi * height), np.rint(fj * width)
    bottom, right = np.rint(fi * height + fh * height), np.rint(fj * width + fw * width)
    bad = (top < 0) | (left < 0) | (bottom > height) | (right > width) | (bottom - top < 1) | (right - left < 1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise NrrError(where, f"view {k}: crop fractions {coords[k].tolist()} give no crop inside the "
                              f"{height}x{width} image")
    return top.astype(np.int64), left.astype(np.int64), (bottom - top).astype(np.int64), (right - left).astype(np.int64)


# -- the label folder ---------------------------------------------------------------------------------
@dataclass
class LabelFolder:
    root: Path
    epochs: int
    batches: int  # per epoch
    bytes: int  # every file of the epochs used
    files: int
    digest: str  # of the relative paths and sizes of the batch files (the resume fingerprint)

    def path(self, epoch: int, batch: int) -> Path:
        return self.root / f"epoch_{epoch}" / f"batch_{batch}.tar"


def _numbered(folder: Path, pattern: re.Pattern[str], want_dir: bool) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and (p.is_dir() if want_dir else p.is_file()):
            k = int(m.group(1))
            if k in out:
                raise NrrError(p, f"two entries number {k} ({out[k].name} and {p.name})")
            out[k] = p
    return out


def scan_label_folder(root: str | os.PathLike[str], epochs: int | None = None) -> LabelFolder:
    """Check the ``epoch_{e}/batch_{b}.tar`` layout: epochs 0..E-1, the same batches 0..nb-1 in each.

    ``epochs``: use only the first ``epochs`` epochs, which must be complete; the others may be missing
    or partly written (a relabel run still going, or killed). Without it a partly written folder is
    refused, with the number of complete epochs to give.
    """
    root = Path(root)
    if not root.is_dir():
        raise NrrError(root, "no such folder" if not root.exists() else "not a folder (expected epoch_{e}/batch_{b}.tar)")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise NrrError("--epochs", f"the number of epochs must be a positive integer, got {epochs!r}")
    found = _numbered(root, _EPOCH_RE, True)
    if not found:
        raise NrrError(root, "no epoch_{e} folders (expected SRe2L's epoch_{e}/batch_{b}.tar layout)")
    batches = {e: _numbered(folder, _BATCH_RE, False) for e, folder in found.items()}
    full = max((len(b) for b in batches.values()), default=0)

    def complete(e: int) -> bool:
        return e in batches and len(batches[e]) == full and set(batches[e]) == set(range(full))

    done = 0
    while complete(done):
        done += 1
    use = epochs if epochs is not None else max(found) + 1
    if use > done:
        bad = done
        if bad not in found:
            what = f"missing epoch folder (found epochs {_ranges(sorted(found))})"
        elif not batches[bad]:
            what = "no batch_{b}.tar files (a folder still being written?)"
        else:
            gaps = sorted(set(range(full)) - set(batches[bad]))
            what = (f"missing batch_{gaps[0]}.tar: {len(batches[bad])} of the {full} batch files of a full epoch "
                    "(a folder still being written?)")
        where = root / f"epoch_{bad}"
        if epochs is not None:
            raise NrrError(where, f"{what}; --epochs {epochs} asks for more than the {done} complete epoch(s)")
        hint = f"; convert the {done} complete epoch(s) with --epochs {done}" if done else ""
        raise NrrError(where, f"{what}{hint}")
    sizes: list[str] = []
    for e in range(use):
        sizes.extend(f"{e}/{b}:{batches[e][b].stat().st_size}" for b in range(full))
    total = files = 0
    for e in range(use):
        for dirpath, _, names in os.walk(found[e]):
            for name in names:
                total += os.path.getsize(os.path.join(dirpath, name))
                files += 1
    digest = hashlib.sha256("\n".join(sizes).encode()).hexdigest()
    return LabelFolder(root, use, full, total, files, digest)


def _ranges(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")


# -- images -------------------------------------------------------------------------------------------
def sanitize_key(name: str) -> str:
    """A store key from a file stem or a sample key: runs of other characters become '-'."""
    return _KEY_BAD.sub("-", name).strip("-")[:200]


@dataclass
class ImageSource:
    """The images the labels were made on, in the order SRe2L's dataset listed them."""

    kind: str  # imagefolder | shards
    spec: str
    classes: list[str] | None
    count: int | None  # known up front for ImageFolder trees
    bytes: int
    files: int
    digest: str
    entries: list[Any] | None = None  # ImageFolder entries
    shards: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": path_text(self.spec), "bytes": self.bytes, "files": self.files}

    def samples(self, mode: str, encoded: bool = False) -> Iterator[tuple[str, Any, int, dict[str, Any], str]]:
        """``(key, image, label, meta, where)`` in store order; keys unique and valid.

        ``image`` is the decoded pixels in ``mode``, or with ``encoded`` the source bytes unchanged.
        """
        seen: set[str] = set()
        if self.kind == "imagefolder":
            assert self.entries is not None
            root = Path(self.spec)
            stems = [sanitize_key(e.path.stem) or "img" for e in self.entries]
            counts: dict[str, int] = {}
            for s in stems:
                counts[s] = counts.get(s, 0) + 1
            for i, (e, s) in enumerate(zip(self.entries, stems)):
                key = s if counts[s] == 1 else f"{s[:190]}-{i:07d}"
                image = read_file(e.path) if encoded else convert_mode(read_image_file(e.path), mode)
                yield key, image, e.label, {"source": path_text(e.path.relative_to(root))}, path_text(e.path)
            return
        for i, smp in enumerate(iter_samples(self.shards or self.spec, decode=not encoded)):
            key = sanitize_key(smp.key) or f"img{i:07d}"
            if key in seen:
                key = f"{key[:190]}-{i:07d}"
            seen.add(key)
            image = smp.data if encoded else convert_mode(smp.image, mode)
            meta = {"source_key": path_text(smp.key), "shard": path_text(os.path.basename(smp.shard))}
            yield key, image, smp.label, meta, f"{path_text(smp.shard)}: {path_text(smp.key)}"


def open_image_source(spec: str | os.PathLike[str], classes: Sequence[str] | None = None) -> ImageSource:
    """An ImageFolder tree (a folder with class subfolders) or WebDataset shards (anything else)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        names, entries = list_imagefolder(path)
        sizes = [e.path.stat().st_size for e in entries]
        digest = hashlib.sha256("\n".join(f"{e.path.relative_to(path).as_posix()}:{s}"
                                          for e, s in zip(entries, sizes)).encode()).hexdigest()
        if classes is not None and len(classes) != len(names):
            raise NrrError(path, f"{len(names)} class folders, but {len(classes)} class names were given")
        return ImageSource("imagefolder", text, list(classes) if classes is not None else names, len(entries),
                           sum(sizes), len(entries), digest, entries=entries)
    shards = resolve_shards(text)
    local = [s for s in shards if not is_remote(s)]
    sizes = [os.path.getsize(s) for s in local]
    digest = hashlib.sha256("\n".join(f"{s}:{n}" for s, n in zip(local, sizes)).encode()).hexdigest()
    names = list(classes) if classes is not None else read_class_names(shards)
    return ImageSource("shards", text, names, None, sum(sizes), len(shards), digest, shards=shards)


# -- epoch orders -------------------------------------------------------------------------------------
def sampler_orders(n: int, seed: int = DEFAULT_SAMPLER_SEED) -> Iterator[np.ndarray]:
    """Image order of epoch 0, 1, ...: successive passes of SRe2L's seeded ``RandomSampler``.

    The sampler itself (not a re-implementation) is iterated to exhaustion each pass, as a
    DataLoader does, so its generator advances exactly as it did in the relabel run.
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    sampler = torch.utils.data.RandomSampler(range(n), generator=g)
    while True:
        # list() runs the iterator to its end: torch's RandomSampler draws one more (empty) randperm
        # there, and a DataLoader always gets that far, so stopping after n items would drift.
        yield np.array(list(sampler), dtype=np.int64)


def file_orders(path: str | os.PathLike[str], n: int, epochs: int) -> Iterator[np.ndarray]:
    """Orders from ``--order-file``: ``.npy`` [E, N] (memory-mapped) or text, one epoch per line."""
    path = Path(path)
    if not path.is_file():
        raise NrrError(path, "no such order file")

    def check(row: np.ndarray, e: int) -> np.ndarray:
        if row.shape != (n,) or row.min() < 0 or row.max() >= n or np.bincount(row, minlength=n).max() != 1:
            raise NrrError(path, f"epoch {e}: the order is not a permutation of the {n} images")
        return row

    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise NrrError(path, f"unreadable .npy order file: {exc}") from None
        if arr.ndim != 2 or arr.shape[0] < epochs or arr.dtype.kind not in "iu":
            raise NrrError(path, f"order array must be integers [epochs >= {epochs}, {n}], found {arr.dtype} {arr.shape}")
        return (check(np.array(arr[e], dtype=np.int64), e) for e in range(epochs))

    def lines() -> Iterator[np.ndarray]:
        e = 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = np.array([int(t) for t in line.replace(",", " ").split()], dtype=np.int64)
                except ValueError:
                    raise NrrError(path, f"epoch {e}: the line holds something other than integers") from None
                yield check(row, e)
                e += 1
                if e == epochs:
                    return
        raise NrrError(path, f"the order file has {e} epoch lines, the labels have {epochs} epochs")

    return lines()


# -- the conversion -----------------------------------------------------------------------------------
def _check_normalization(norm: Any, channels: int) -> dict[str, list[float]] | None:
    if norm == "auto":
        return IMAGENET_NORMALIZATION if channels == 3 else None
    if norm is None:
        return None
    try:
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    except (KeyError, TypeError, ValueError):
        raise NrrError(None, "normalization must be {'mean': [...], 'std': [...]}") from None
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise NrrError(None, f"normalization needs {channels} mean and {channels} positive std value(s), "
                             f"got mean {mean}, std {std}")
    return {"mean": mean, "std": std}


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
) -> dict[str, Any]:
    """Convert an SRe2L soft-label folder plus its images into an explicit-mode store at ``out``.

    ``epochs``: convert only the first ``epochs`` (complete) epochs of a partly written folder.
    ``teacher``: the teacher that made the labels; once the first file of epochs is converted, a
    sample of ``replay_sample`` views is replayed with it (`nrrstore.distill.replay`) and the
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
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise NrrError(None, f"temperature must be a positive number, got {temperature!r}")
    if precision not in DISTANCE_TYPES:
        raise NrrError(None, f"unknown precision {precision!r}; use one of {', '.join(DISTANCE_TYPES)}")
    if mode not in IMAGE_MODES:
        raise NrrError(None, f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
    for name, v in (("epochs per file", epochs_per_file), ("shard size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise NrrError(None, f"{name} must be a positive integer, got {v!r}")
    if quant_max is not None:
        quant_max = quant.check_max(quant_max)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise NrrError(None, f"workers must be a non-negative integer, got {workers!r}")
    if isinstance(classes, (str, os.PathLike)):
        classes = load_class_names(classes)
    folder = scan_label_folder(labels_dir, epochs)
    if workers is None:  # a pool costs a fork and some copying: worth it for real folders only
        workers = min(4, os.cpu_count() or 1) if folder.epochs * folder.batches >= POOL_MIN_FILES else 0
    first = load_batch(folder.path(0, 0))
    batch, num_classes = len(first), int(first.logits.shape[1])
    src = open_image_source(images, classes)
    for inside in (folder.root, Path(images)):
        if inside.exists() and is_inside(out, inside):
            raise NrrError(out, f"the output may not lie inside the input folder {inside}")
    check_output_dir(out, overwrite)
    if src.count is not None:
        _check_count(src.count, folder, batch, Path(images))
    if src.classes is not None and len(src.classes) != num_classes:
        raise NrrError(folder.path(0, 0), f"logits have {num_classes} classes, but the images have {len(src.classes)} "
                                          f"classes ({src.spec})")

    order_digest = _sha256_file(order_file) if order_file is not None else None
    args = {
        "labels": str(folder.root.resolve()), "labels_digest": folder.digest, "images": os.path.abspath(src.spec),
        "images_digest": src.digest, "sampler_seed": None if order_file else int(sampler_seed),
        "order_file_sha256": order_digest, "temperature": float(temperature), "keep_full": bool(keep_full),
        "precision": precision, "quant_max": quant_max, "epochs_per_file": epochs_per_file, "size": size,
        "mode": mode, "normalization": normalization, "classes": list(src.classes) if src.classes else None,
        "shard_size": shard_size,
    }
    work = out.with_name(f"{WORK_PREFIX}{out.name}")
    state = load_state(work, args, "conversion")
    if state is None:
        work.mkdir(parents=True, exist_ok=True)
        state = {"args": args, "mix": "none", "quant_max": quant_max, "logits_dtypes": []}
        save_state(work, state)
    with output_lock(out), os_errors_name(out):
        try:
            return _run(folder, src, out, work, state, batch, num_classes, t0, order_file, overwrite, workers,
                        progress, teacher, replay_sample)
        except (NrrError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)  # a bad input: resuming would meet it again
            if isinstance(exc, NrrError) and staged_as(exc, work / "store", out) is not exc:
                raise staged_as(exc, work / "store", out) from None
            raise


def _run(folder: LabelFolder, src: ImageSource, out: Path, work: Path, state: dict[str, Any], batch: int,
         num_classes: int, t0: float, order_file: Any, overwrite: bool, workers: int,
         progress: Progress | None, teacher: Any = None, replay_sample: int = 256) -> dict[str, Any]:
    args = state["args"]
    store_dir = work / "store"
    t_images, c_images = time.perf_counter(), time.process_time()
    if not (store_dir / MANIFEST_NAME).is_file():
        _write_images(src, store_dir, folder, batch, num_classes, args, progress)
    t_labels, c_labels = time.perf_counter(), time.process_time()
    st = Store(store_dir)
    m = st.manifest
    n, height, width = m.num_images, m.image.height, m.image.width
    _check_count(n, folder, batch, Path(src.spec))
    size = args["size"] if args["size"] is not None else height
    if args["size"] is None and height != width:
        raise NrrError(src.spec, f"images are {height}x{width}, not square: give the views' output size (--size)")
    orders = file_orders(order_file, n, folder.epochs) if order_file is not None else sampler_orders(n, args["sampler_seed"])
    job = _Job(folder, st, size, batch, num_classes, args, state, work, workers, progress)
    epf = args["epochs_per_file"]
    chunks = [(a, min(a + epf, folder.epochs) - 1) for a in range(0, folder.epochs, epf)]
    labels_dir = store_dir / "labels"
    labels_dir.mkdir(exist_ok=True)
    resumed = computed = 0
    replay = None
    try:
        for k, (a, b) in enumerate(chunks):
            if (labels_dir / chunk_name(a, b)).is_file():
                for _ in range(a, b + 1):
                    next(orders)
                job.files_done += (b - a + 1) * folder.batches
                resumed += 1
            else:
                job.chunk(a, b, orders, labels_dir / chunk_name(a, b))
                computed += 1
            if teacher is not None and replay is None:  # after the first file: fail early, not after all epochs
                replay = _check_replay(st, folder, state, chunks[:k + 1], size, num_classes, batch, teacher,
                                       replay_sample)
    finally:
        job.close()
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


def _write_images(src: ImageSource, store_dir: Path, folder: LabelFolder, batch: int, num_classes: int,
                  args: dict[str, Any], progress: Progress | None) -> None:
    """The images store: the source bytes as they are when every image can be (one pass), else PNG."""
    try:
        _images_store(src, store_dir, folder, batch, num_classes, args, progress, AsIs(args["mode"]))
    except NotAsIs as exc:
        _images_store(src, store_dir, folder, batch, num_classes, args, progress, None, exc.why)


def _images_store(src: ImageSource, store_dir: Path, folder: LabelFolder, batch: int, num_classes: int,
                  args: dict[str, Any], progress: Progress | None, as_is: AsIs | None, why: str = "") -> None:
    classes = src.classes or [str(i) for i in range(num_classes)]
    source = {
        "format": "sre2l", "path": path_text(folder.root.resolve()), "bytes": folder.bytes, "files": folder.files,
        "epochs": folder.epochs, "batch_size": batch, "num_classes": num_classes,
        "images": src.describe(), "total_bytes": folder.bytes + src.bytes,
    }
    w: StoreWriter | None = None
    try:
        for i, (key, image, label, meta, where) in enumerate(src.samples(args["mode"], encoded=as_is is not None)):
            if not 0 <= label < len(classes):
                raise NrrError(src.spec, f"image {meta}: label {label} outside the {len(classes)} classes")
            head = as_is.check(image, where) if as_is is not None else None
            if w is None:  # the first image decides the store's format
                w = StoreWriter(store_dir, classes, image_format=head.ext if head else "png",
                                shard_size=args["shard_size"], overwrite=True)
            if head is not None:
                w.add_encoded(key, image, label, meta, where, header=head)
            else:
                w.add_image(key, image, label, meta)
            if progress:
                progress("write images", i + 1, src.count)
        if w is None:
            raise NrrError(src.spec, "no images")
        source["images"]["stored"] = f"as is ({w.image_format})" if as_is is not None else f"re-encoded as png: {why}"
        w.set_meta("source", source)
        w.set_meta("normalization", _check_normalization(args["normalization"], w.channels or 1))
        w.finalize()
    finally:
        if w is not None:
            w.__exit__(None, None, None)


@dataclass
class EpochRows:
    """One epoch of the label folder as store rows (row = store position): what a worker sends back."""

    epoch: int
    d_org: np.ndarray  # float32 [N]
    d_aug: np.ndarray
    cols: dict[str, np.ndarray]  # EXPLICIT_COLUMNS
    soft: np.ndarray | None  # float16 [N, C] with keep_full
    mixes: list[tuple[str, str]]  # (mix mode, file) per batch file
    dtypes: list[str]


@dataclass
class _Failure:
    """An `NrrError` raised in a worker, sent back as data (the exception type does not pickle)."""

    path: str | None
    problem: str


@dataclass(frozen=True)
class EpochWork:
    """Everything needed to turn one epoch's batch files into rows, independent of the other epochs."""

    folder: LabelFolder
    labels: np.ndarray  # int64 [N], class of each store position
    height: int
    width: int
    size: int
    num_classes: int
    batch: int
    temperature: float
    keep_full: bool

    def __call__(self, e: int, order: np.ndarray) -> EpochRows:
        n, bs = len(self.labels), self.batch
        d_org = np.empty(n, np.float32)
        d_aug = np.empty(n, np.float32)
        cols = {c: np.empty(n, dt) for c, dt in EXPLICIT_COLUMNS.items()}
        soft = np.empty((n, self.num_classes), np.float16) if self.keep_full else None
        labels = torch.from_numpy(self.labels)
        buf = torch.empty(bs, self.num_classes, dtype=torch.float32)
        mixes, dtypes = [], set()
        for b in range(self.folder.batches):
            path = self.folder.path(e, b)
            pos = order[b * bs:(b + 1) * bs]
            rec = load_batch(path)
            if len(rec) != len(pos):
                raise NrrError(path, f"holds {len(rec)} views, expected {len(pos)} ({n} images in batches of {bs}, "
                                     f"the size of epoch_0/batch_0.tar)")
            if rec.logits.shape[1] != self.num_classes:
                raise NrrError(path, f"logits have {rec.logits.shape[1]} classes, epoch_0/batch_0.tar has "
                                     f"{self.num_classes}")
            mixes.append((rec.mix, os.fspath(path)))
            dtypes.add(str(rec.logits.dtype).replace("torch.", ""))
            cols["crop_i"][pos], cols["crop_j"][pos], cols["crop_h"][pos], cols["crop_w"][pos] = \
                crop_pixels(rec.coords, self.height, self.width, path)
            cols["flip"][pos] = rec.flip
            partner = pos if rec.partner is None else pos[rec.partner]
            lam = 1.0 if rec.lam is None else rec.lam
            cols["partner"][pos] = partner
            cols["lam"][pos] = lam
            box = (0, 0, 0, 0)
            if rec.box is not None:
                box = rec.box  # SRe2L's (x1, y1, x2, y2), x on the height axis, is our (y1, x1, y2, x2)
                if not (0 <= box[0] <= box[2] <= self.size and 0 <= box[1] <= box[3] <= self.size):
                    raise NrrError(path, f"CutMix box {list(box)} does not lie inside the {self.size}x{self.size} views")
            for c, v in zip(("box_y1", "box_x1", "box_y2", "box_x2"), box):
                cols[c][pos] = v
            # widened into one reused buffer: a fresh 1 MB tensor per file costs more in page faults
            # than the distances themselves
            logits = buf[:len(pos)].copy_(rec.logits)
            if self.temperature != 1.0:
                logits.div_(self.temperature)
            a, c = distances(logits, labels[pos], labels[partner], float(np.float32(lam)))
            a, c = a.numpy(), c.numpy()
            if not (np.isfinite(a).all() and np.isfinite(c).all()):  # cheaper than scanning B x C logits
                raise NrrError(path, "item 5 (teacher logits) holds non-finite values where the labels need them")
            d_org[pos], d_aug[pos] = a, c
            if soft is not None:
                soft[pos] = torch.softmax(logits, dim=1).to(torch.float16).numpy()
        ViewBatch.from_columns(cols, os.fspath(self.folder.path(e, 0).parent))  # the loader's own checks
        return EpochRows(e, d_org, d_aug, cols, soft, mixes, sorted(dtypes))


_WORKER: EpochWork | None = None


def _worker_init(work: EpochWork) -> None:
    global _WORKER
    _WORKER = work
    torch.set_num_threads(1)  # parallelism comes from the processes


def _worker_task(e: int, order: np.ndarray) -> EpochRows | _Failure:
    assert _WORKER is not None
    try:
        return _WORKER(e, order)
    except NrrError as exc:
        return _Failure(exc.path, exc.problem)


def _start_method() -> str:
    # fork starts workers in milliseconds without re-importing torch; elsewhere (macOS, Windows) spawn.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class _Job:
    """Turns epochs of batch files into Parquet chunks.

    Epochs are independent given their image order, so with ``workers > 1`` a process pool converts
    several at once (at most ``workers`` ahead of the writer, so memory stays bounded whatever the
    number of epochs); rows and bytes are the same either way.
    """

    def __init__(self, folder: LabelFolder, st: Store, size: int, batch: int, num_classes: int,
                 args: dict[str, Any], state: dict[str, Any], work: Path, workers: int,
                 progress: Progress | None) -> None:
        self.folder, self.st, self.batch, self.num_classes = folder, st, batch, num_classes
        self.args, self.state, self.work, self.progress = args, state, work, progress
        m = st.manifest
        self.n = m.num_images
        self.epoch_work = EpochWork(folder, st.labels(), m.image.height, m.image.width, size, num_classes, batch,
                                    float(args["temperature"]), bool(args["keep_full"]))
        self.precision = args["precision"]
        self.schema = distance_schema(self.precision, explicit=True)
        self.files_done = 0
        self.total_files = folder.epochs * folder.batches
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.soft = None
        if args["keep_full"]:
            self.soft = create_softlabels(st.path / SOFTLABELS_PATH, folder.epochs, self.n, num_classes,
                                          self.soft_block)

    @property
    def soft_block(self) -> int:
        return max(1, min(self.n, 1024))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def _epochs(self, first: int, last: int, orders: Iterator[np.ndarray]) -> Iterator[EpochRows]:
        """Rows of epochs ``first..last`` in order, computed here or by the pool."""
        if self.workers <= 1 or first == last:
            for e in range(first, last + 1):
                yield self.epoch_work(e, next(orders))
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(_start_method()),
                                            initializer=_worker_init, initargs=(self.epoch_work,))
        pending: deque[Future[EpochRows | _Failure]] = deque()
        e = first
        try:
            while e <= last or pending:
                while e <= last and len(pending) < self.workers:
                    pending.append(self.pool.submit(_worker_task, e, next(orders)))
                    e += 1
                res = pending.popleft().result()
                if isinstance(res, _Failure):
                    raise NrrError(res.path, res.problem)
                yield res
        finally:
            for fut in pending:
                fut.cancel()

    def chunk(self, first: int, last: int, orders: Iterator[np.ndarray], path: Path) -> None:
        tmp = tmp_name(path)
        writer = pq.ParquetWriter(tmp, self.schema, **parquet_options(self.precision))
        epochs = self._epochs(first, last, orders)
        try:
            for rows in epochs:
                for mix, where in rows.mixes:
                    self._mix_mode(mix, where)
                self.state["logits_dtypes"] = sorted(set(self.state["logits_dtypes"]) | set(rows.dtypes))
                if self.soft is not None:
                    self.soft[rows.epoch] = rows.soft
                writer.write_table(self._table(rows.epoch, rows.d_org, rows.d_aug, rows.cols),
                                   row_group_size=max(1, self.n))
                self.files_done += self.folder.batches
                if self.progress:
                    self.progress("convert label files", self.files_done, self.total_files)
            writer.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # on a full disk closing fails too; the file must still go
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
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

    def _table(self, epoch: int, d_org: np.ndarray, d_aug: np.ndarray, cols: dict[str, np.ndarray]) -> pa.Table:
        if self.precision == "int8":
            if self.state["quant_max"] is None:
                self.state["quant_max"] = quant.choose_max(np.concatenate([d_org, d_aug]))
            qmax = self.state["quant_max"]
            values = [quant.encode(d_org, qmax), quant.encode(d_aug, qmax)]
        else:
            dtype = np.float16 if self.precision == "fp16" else np.float32
            values = [d_org.astype(dtype), d_aug.astype(dtype)]
        data = {"epoch": np.full(self.n, epoch, np.int32), "image": np.arange(self.n, dtype=np.int32),
                "d_org": values[0], "d_aug": values[1], **cols}
        return pa.table({f.name: pa.array(data[f.name], type=f.type) for f in self.schema}, schema=self.schema)


def _record_labels(st: Store, folder: LabelFolder, state: dict[str, Any], chunks: list[tuple[int, int]], size: int,
                   num_classes: int, batch: int, soft: bool) -> tuple[dict[str, str], AugRecipe]:
    """List the distance files of ``chunks`` (and the soft labels) in the work store's manifest."""
    args = state["args"]
    m = st.manifest
    section: dict[str, Any] = {
        "files": [{"path": f"labels/{chunk_name(a, b)}", "first_epoch": a, "last_epoch": b} for a, b in chunks],
        "epochs": chunks[-1][1] + 1, "precision": args["precision"], "mode": "explicit",
    }
    if args["precision"] == "int8":
        section["quant"] = {"max": state["quant_max"]}
    labels: dict[str, Any] = {"distances": section}
    kinds = {f"labels/{chunk_name(a, b)}": "distances" for a, b in chunks}
    if soft:
        shape = (folder.epochs, m.num_images, num_classes)
        labels["softlabels"] = softlabels_section(shape, (1, max(1, min(m.num_images, 1024)), num_classes),
                                                  args["temperature"])
        kinds[SOFTLABELS_PATH] = "softlabels"
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
    from nrrstore.distill.replay import replay_check

    _record_labels(st, folder, state, chunks, size, num_classes, batch, soft=False)
    report = replay_check(Store(st.path), teacher, sample=sample)
    if report.problem:
        raise NrrError(folder.root, report.problem)
    return report.to_dict()


def _finish(st: Store, folder: LabelFolder, src: ImageSource, out: Path, work: Path, state: dict[str, Any],
            chunks: list[tuple[int, int]], size: int, num_classes: int, batch: int, overwrite: bool) -> dict[str, Any]:
    args = state["args"]
    kinds, recipe = _record_labels(st, folder, state, chunks, size, num_classes, batch, bool(args["keep_full"]))
    stored = (Store(st.path).manifest.source.get("images") or {}).get("stored")
    check_output_dir(out, overwrite)
    install_folder(st.path, out)
    shutil.rmtree(work, ignore_errors=True)
    files = sorted(kinds)
    distance_bytes = sum((out / p).stat().st_size for p in files if p.endswith(".parquet"))
    return {"store": str(out), "mix": state["mix"], "precision": args["precision"], "files": files,
            "distance_bytes": distance_bytes, "quant_max": state["quant_max"],
            "logits_dtypes": sorted(state["logits_dtypes"]), "source_bytes": folder.bytes,
            "images_bytes": src.bytes, "images_stored": stored, "keep_full": args["keep_full"],
            "augmentation": recipe.to_dict()}


# -- helpers -------------------------------------------------------------------------------------------
def _sha256_file(path: str | os.PathLike[str]) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise NrrError(path, f"cannot read: {os_problem(exc)}") from None

