"""Label codecs: what a store keeps of the teacher's output per augmented view, at what cost in bytes.

A user picks a storage budget; each codec is one point on the accuracy-per-byte curve:

- ``dbr``: the two DBR distances (the Parquet table, :mod:`nrrstore.format.distances`);
- ``full``: the whole probability vector, float16 [E, N, C] (:mod:`nrrstore.format.softlabels`);
- ``topk:K``: the teacher's K most probable class ids (the smallest unsigned type that holds C - 1)
  and their probabilities (float16) per view: FKD's and SRe2L's scheme;
- ``dbrc:K`` (*DBR plus confusers*, ours): DBR's two distances plus the ids of the K classes the teacher
  finds most likely *other than the view's own label* and the teacher's distance to each
  (``-log p``, float16). DBR knows how sure the teacher is of the labelled classes; what it lacks is
  where the rest of the mass goes, and for a mixed view that is mostly one or two classes.
  ``dbrc:0`` is DBR's own table read as a distribution (no extra bytes).
- ``topk:K:int8`` and ``dbrc:K:int8``: the same, with each value as an 8-bit code of ``-log p`` in uniform
  steps of ``log1p`` up to `CODE_MAX` nats (:mod:`nrrstore.format.quant`): half the value bytes.

Every array codec is a set of zarr (format 3) arrays ``labels/codecs/<folder>/<field>.zarr`` of shape
[E, N, K], chunked one epoch by a block of images like the soft labels (a killed relabel rewrites
whole chunks), and one manifest entry ``labels.codecs[name]``. Label *pruning* (LPLD) is orthogonal:
labels for E' < E epochs of distinct views, replayed cyclically by the loader (``cycle``).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nrrstore.errors import NrrError, unless_out_of_memory
from nrrstore.format import fs, quant
from nrrstore.format.layout import CODECS_DIR, SOFTLABELS_PATH, codecs_dir
from nrrstore.format.softlabels import create_label_array, open_label_array

WORK_NAME = "codecs"
"""The codec arrays' folder inside a relabel job's work folder, until :func:`install_codecs` moves it."""
MAX_K = 64
VALUE_BYTES = 2  # float16 probabilities / distances
CODE_MAX = 20.0
"""The int8 codes' scale in nats: ``1 + d`` within 0.6% up to 20 nats (p down to 2e-9); larger distances clip."""
_SPEC = re.compile(r"^(dbr|full|topk|dbrc)(?::([0-9]+))?(?::(int8|fp16))?$")  # ASCII digits, lower case only


@dataclass(frozen=True)
class Codec:
    """One label codec: ``kind`` and, for the array codecs, ``k`` classes per view."""

    kind: str
    k: int = 0
    int8: bool = False  # values as 8-bit codes of -log p instead of float16

    @property
    def name(self) -> str:
        if self.kind not in ("topk", "dbrc"):
            return self.kind
        return f"{self.kind}:{self.k}" + (":int8" if self.int8 else "")

    @property
    def folder(self) -> str:
        return f"{self.kind}{self.k}" + ("i8" if self.int8 else "")

    @property
    def has_arrays(self) -> bool:
        """Whether the codec writes arrays of its own (``dbr``, ``full`` and ``dbrc:0`` reuse others')."""
        return self.kind in ("topk", "dbrc") and self.k > 0

    @property
    def needs_distances(self) -> bool:
        return self.kind in ("dbr", "dbrc")

    def fields(self, num_classes: int) -> dict[str, np.dtype[Any]]:
        """Array name -> dtype of the codec's own arrays."""
        if not self.has_arrays:
            return {}
        if self.int8:
            return {"ids": id_dtype(num_classes), "codes": np.dtype(np.uint8)}
        return {"ids": id_dtype(num_classes), ("probs" if self.kind == "topk" else "dist"): np.dtype(np.float16)}

    def store_values(self, ids: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
        """The stored fields of a block of views from `encode_views`' ids and float values (probabilities
        for ``topk``, distances for ``dbrc``)."""
        v = np.asarray(values, dtype=np.float64)
        if self.int8:
            dist = v if self.kind == "dbrc" else -np.log(np.clip(v, np.finfo(np.float64).tiny, 1.0))
            return {"ids": ids, "codes": quant.encode(np.clip(dist, 0.0, CODE_MAX), CODE_MAX)}
        name = "probs" if self.kind == "topk" else "dist"
        return {"ids": ids, name: np.minimum(v, float(np.finfo(np.float16).max)).astype(np.float16)}

    def raw_bytes_per_view(self, num_classes: int, distance_bytes: float = VALUE_BYTES) -> float:
        """Uncompressed bytes one view costs: the formula `size-report` prints for any C."""
        ids = id_dtype(num_classes).itemsize
        if self.kind == "full":
            return float(num_classes * VALUE_BYTES)
        dbr = 2 * distance_bytes if self.needs_distances else 0.0
        return dbr + self.k * (ids + (1 if self.int8 else VALUE_BYTES))


def id_dtype(num_classes: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds every class id."""
    for t in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(t).max:
            return np.dtype(t)
    raise NrrError(None, f"{num_classes} classes do not fit a 32-bit class id")


def parse_codec(text: str, num_classes: int | None = None) -> Codec:
    """``"topk:2"`` -> ``Codec("topk", 2)``, ``"dbrc:4:int8"`` -> ``Codec("dbrc", 4, int8=True)``; refuses
    unknown names and K outside 1..min(C, 64) (0..min(C - 1, 64) for dbrc). Strict: ``TOPK:2`` or a
    fullwidth digit is refused, not guessed at (a name is what the manifest records and readers compare)."""
    m = _SPEC.match(str(text).strip())
    if not m:
        raise NrrError(None, f"unknown label codec {text!r}; use dbr, full, topk:K or dbrc:K, optionally "
                             "followed by :int8 (e.g. topk:2, dbrc:4:int8)")
    kind, k, precision = m.group(1), m.group(2), m.group(3)
    if kind in ("dbr", "full"):
        if k is not None or precision:
            raise NrrError(None, f"label codec {kind!r} takes no ':K' or precision (got {text!r}; DBR's precision "
                                 "is relabel's --precision)")
        return Codec(kind)
    if k is None:
        raise NrrError(None, f"label codec {kind!r} needs a class count, e.g. {kind}:2")
    low = 1 if kind == "topk" else 0
    top = min(MAX_K, num_classes - (kind == "dbrc")) if num_classes else MAX_K
    if not low <= int(k) <= top:
        raise NrrError(None, f"label codec {text!r}: K must be in {low}..{top}")
    return Codec(kind, int(k), int8=precision == "int8" and int(k) > 0)


def parse_codecs(text: str | Sequence[str], num_classes: int | None = None) -> list[Codec]:
    """A comma-separated list (or a list of such strings) of codecs, in order; a codec named twice is refused
    (``dbr,dbr`` is a typo more often than an intent)."""
    items = [text] if isinstance(text, str) else list(text)
    out: list[Codec] = []
    for part in (p for item in items for p in str(item).split(",")):
        if part.strip():
            c = parse_codec(part, num_classes)
            if c in out:
                raise NrrError(None, f"label codec {part.strip()!r} is named twice")
            out.append(c)
    if not out:
        raise NrrError(None, "no label codec given; use e.g. dbr or dbr,topk:2")
    return out


def codecs_to_write(requested: str | Sequence[str] | None, full_softlabels: bool, num_classes: int) -> list[Codec]:
    """The codecs a labelling job (relabel, conversion) writes: DBR first, always (resume and replay checks stand
    on its table), then the requested ones in order, then ``full`` when ``full_softlabels`` asks for it."""
    wanted = parse_codecs(requested or "dbr", num_classes)
    extra = [Codec("full")] if full_softlabels else []
    return list(dict.fromkeys([Codec("dbr"), *(c for c in wanted if c.kind != "dbr"), *extra]))


LABEL_MODES = ("dbr", "kd", "onehot", "topk:K", "dbrc:K")
"""What a student can train on: one-hot labels, DBR's distances, full soft labels (KD) or a label codec."""


def label_mode(labels: str, num_classes: int | None = None) -> str:
    """The canonical name of a label mode (``full`` is ``kd``; codecs as `parse_codec` spells them)."""
    text = str(labels).strip()  # strict, as codec names: "KD" or "TOPK:2" is refused, not guessed at
    if text in ("onehot", "kd", "dbr"):
        return text
    if text == "full":
        return "kd"
    try:
        return parse_codec(text, num_classes).name
    except NrrError:
        raise NrrError(None, f"unknown label mode {labels!r}; use one of {', '.join(LABEL_MODES)} "
                             "(e.g. topk:2)") from None


# -- writing --------------------------------------------------------------------------------------
def create_codec_arrays(work: str | os.PathLike[str], codec: Codec, epochs: int, num_images: int,
                        num_classes: int, block: int) -> dict[str, Any]:
    """Create (or reopen, same shape and chunks) the codec's arrays under ``work`` for writing."""
    shape = (int(epochs), int(num_images), codec.k)
    chunks = (1, max(1, min(int(block), int(num_images))), codec.k)
    return {field: create_label_array(Path(work) / WORK_NAME / codec.folder / f"{field}.zarr", shape, chunks, dtype,
                                      "codec")
            for field, dtype in codec.fields(num_classes).items()}


def encode_views(codec: Codec, probs: Any, y: Any, ranked: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """``{"ids", "values"}`` of a batch of views from the teacher's probabilities (torch [B, C], float32):
    the codec's class ids (int64) and their probabilities (``topk``) or distances ``-log p`` (``dbrc``) as
    float32 tensors; `Codec.store_values` makes the stored fields of them.

    ``y``: the views' own labels (``dbrc`` leaves them out). ``ranked``: ``rank_classes(probs)``, when
    several codecs share one sort. Ties go to the lower class id (a stable sort), so the same logits give
    the same bytes on every device.
    """
    import torch

    p, ids = ranked if ranked is not None else rank_classes(probs)
    if codec.kind == "topk":
        return {"ids": ids[:, :codec.k], "values": p[:, :codec.k].float()}
    # the K most probable classes other than y: among the first K + 1, drop y (or the last when y is not there)
    head_p, head_ids = p[:, :codec.k + 1], ids[:, :codec.k + 1]
    keep = torch.argsort((head_ids == y.long().view(-1, 1)).to(torch.int8), dim=1, stable=True)[:, :codec.k]
    dist = -torch.log(head_p.gather(1, keep).clamp_min(torch.finfo(torch.float32).tiny))
    return {"ids": head_ids.gather(1, keep), "values": dist.float()}


def rank_classes(probs: Any) -> tuple[Any, Any]:
    """``(probabilities, class ids)`` of each view, most probable first, ties to the lower id (stable)."""
    import torch

    return torch.sort(probs, dim=1, descending=True, stable=True)


def install_codecs(root: str | os.PathLike[str], work: str | os.PathLike[str],
                   version: str | None = None) -> dict[str, str]:
    """Move the arrays a job wrote in ``work`` into the store, replacing the old ones; idempotent.

    Returns ``{store path: kind}`` as :func:`~nrrstore.format.update.update_store` takes them.
    """
    rel = codecs_dir(version)
    dst = Path(root) / rel
    fs.move_folder_over(Path(work) / WORK_NAME, dst)
    # after the arrays: a crash between the moves leaves the arrays in place, and a rerun writes the same prior again
    fs.move_folder_over(Path(work) / PRIOR_NAME, dst / PRIOR_NAME)
    return {rel: "codecs"} if dst.is_dir() else {}


def codecs_section(codecs: list[Codec], epochs: int, num_images: int, num_classes: int,
                   block: int, base: str = CODECS_DIR) -> dict[str, Any]:
    """The manifest's ``labels.codecs`` entry: every codec written, with its arrays' paths and types."""
    out: dict[str, Any] = {}
    for c in codecs:
        fields = {f: {"path": f"{base}/{c.folder}/{f}.zarr", "dtype": str(d)}
                  for f, d in c.fields(num_classes).items()}
        entry: dict[str, Any] = {"kind": c.kind, "k": c.k, "fields": fields}
        if c.int8:
            entry.update(int8=True, code_max=CODE_MAX)
        if fields:
            entry.update(shape=[epochs, num_images, c.k], chunks=[1, max(1, min(block, num_images)), c.k])
        out[c.name] = entry
    return out


def codec_bytes(manifest: Any) -> dict[str, int]:
    """Measured bytes of each codec a store holds, from the sizes its manifest records (DBR's table counts
    for ``dbr`` and ``dbrc``; stores from before codecs list ``dbr`` and ``full`` by their sections)."""
    labels = manifest.labels
    entries = dict(labels.get("codecs") or {})
    if labels.get("distances") and "dbr" not in entries:
        entries["dbr"] = {"kind": "dbr"}
    if labels.get("softlabels") and "full" not in entries:
        entries["full"] = {"kind": "full"}
    dbr = sum(f.bytes for f in manifest.files if f.kind == "distances")
    out: dict[str, int] = {}
    for name, e in entries.items():
        soft = str((labels.get("softlabels") or {}).get("path", SOFTLABELS_PATH))
        prefixes = [soft] if e["kind"] == "full" else [v["path"] for v in e.get("fields", {}).values()]
        own = sum(f.bytes for f in manifest.files if any(f.path.startswith(p + "/") for p in prefixes))
        out[name] = own + (dbr if e["kind"] in ("dbr", "dbrc") else 0)
    return out


# -- the class prior: where the mass a codec does not store usually goes --------------------------------
PRIOR_NAME = "prior.zarr"
PRIOR_LAM = 0.75
"""A view counts toward its label's row of the prior when the label holds at least this share of it (and toward
its partner's row when the partner does): mostly one class, so the row is that class's, not the mix's."""


def prior_chunk_name(first_epoch: int, last_epoch: int) -> str:
    """The work-folder file of one chunk's prior sums (written before the chunk's distance table is complete)."""
    return f"prior-e{first_epoch:04d}-e{last_epoch:04d}.npy"


def save_prior_chunk(work: str | os.PathLike[str], first: int, last: int, sums: np.ndarray) -> None:
    from nrrstore.format.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, np.asarray(sums, dtype=np.float64), allow_pickle=False)
    atomic_write_bytes(Path(work) / prior_chunk_name(first, last), buf.getvalue())


def write_prior(work: str | os.PathLike[str], chunks: list[tuple[int, int]], num_classes: int,
                base: str = CODECS_DIR) -> dict[str, Any]:
    """Sum the chunks' prior files into the class prior (row c: the teacher's mean probabilities over views
    mostly of class c; a class no view was mostly of gets a uniform row), write it as a float32 [C, C] zarr
    array in ``work`` (:func:`install_codecs` moves it beside the codec arrays), and return its manifest entry
    (``labels.codecs_prior``). Written afresh on every install: a resumed install gets the same bytes."""
    import zarr

    total = np.zeros((num_classes, num_classes), np.float64)
    for first, last in chunks:
        with open(Path(work) / prior_chunk_name(first, last), "rb") as f:
            total += np.load(f, allow_pickle=False)
    rows = total.sum(axis=1, keepdims=True)
    prior = np.where(rows > 0, total / np.where(rows > 0, rows, 1.0), 1.0 / num_classes).astype(np.float32)
    path = Path(work) / PRIOR_NAME
    arr = zarr.create_array(store=path, shape=prior.shape, chunks=prior.shape, dtype="float32", fill_value=0.0,
                            compressors=None, zarr_format=3, overwrite=True)
    arr[...] = prior
    return {"path": f"{base}/{PRIOR_NAME}", "shape": [num_classes, num_classes], "dtype": "float32",
            "min_share": PRIOR_LAM}


def read_prior(store_root: str | os.PathLike[str], section: dict[str, Any], num_classes: int) -> np.ndarray:
    """The class prior [C, C] (rows sum to 1), refused with one line when unreadable or out of range."""
    path = fs.location(store_root) / str(section["path"])
    prior = np.asarray(open_label_array(path, "class prior")[...], dtype=np.float32)
    if prior.shape != (num_classes, num_classes) or not np.isfinite(prior).all() or (prior < 0).any() \
            or not np.allclose(prior.sum(axis=1), 1.0, atol=1e-3):
        raise NrrError(path, f"the class prior must be [{num_classes}, {num_classes}] rows of probabilities "
                             f"(got shape {prior.shape})")
    return prior


# -- reading --------------------------------------------------------------------------------------
class CodecLabels:
    """Read access to one array codec of a store: ``read(epoch, start, stop) -> {field: array [n, K]}``."""

    def __init__(self, store_root: str | os.PathLike[str], name: str, section: dict[str, Any],
                 num_classes: int) -> None:
        self.root, self.name, self.num_classes = fs.location(store_root), name, int(num_classes)
        self.codec = Codec(str(section["kind"]), int(section["k"]), bool(section.get("int8", False)))
        self.fields = {f: str(v["path"]) for f, v in section.get("fields", {}).items()}
        self.shape = tuple(int(s) for s in section.get("shape", (0, 0, 0)))
        self._open()

    def _open(self) -> None:
        self._arrays = {}
        for field, rel in self.fields.items():
            path = self.root / rel
            arr = open_label_array(path, f"{self.name} label")
            if tuple(int(s) for s in arr.shape) != self.shape:
                raise NrrError(path, f"{self.name} array has shape {arr.shape}; the manifest says {self.shape}")
            self._arrays[field] = arr

    def read(self, epoch: int, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for field, arr in self._arrays.items():
            try:
                block = np.asarray(arr[int(epoch), int(start):int(stop), :])
            except Exception as exc:  # noqa: BLE001 - any zarr, codec or storage failure is one NrrError
                unless_out_of_memory(exc)
                raise NrrError(self.root / self.fields[field], f"cannot read {self.name} labels of epoch {epoch}: "
                                                               f"{type(exc).__name__}: {exc}") from None
            if field == "codes":  # 8-bit codes of -log p: back to what the fp16 codec stores
                dist = quant.decode(block, CODE_MAX)
                out["probs" if self.codec.kind == "topk" else "dist"] = \
                    np.exp(-dist.astype(np.float64)).astype(np.float32) if self.codec.kind == "topk" else dist
            else:
                out[field] = block.astype(np.int64) if field == "ids" else block.astype(np.float32)
        problem = value_problems(self.name, out, self.num_classes)
        if problem:
            raise NrrError(self.root / next(iter(self.fields.values())), f"{problem} in epoch {epoch} (a corrupt or "
                                                                          "foreign label array)")
        return out

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened in DataLoader workers
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()


def value_problems(name: str, fields: dict[str, np.ndarray], num_classes: int) -> str | None:
    """What is wrong with decoded codec values (ids out of range, probabilities outside [0, 1], negative
    or NaN distances), or None: such labels would train a student on garbage without an error."""
    ids = fields.get("ids")
    if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        return f"{name}: class ids outside 0..{num_classes - 1}"
    for field in ("probs", "dist"):
        v = fields.get(field)
        if v is None or not v.size:
            continue
        if not np.isfinite(v).all() and field == "probs":
            return f"{name}: non-finite probabilities"
        if np.isnan(v).any() or v.min() < 0 or (field == "probs" and v.max() > 1.0 + 1e-3):
            return f"{name}: {field} outside their range"
    return None


def full_bytes_per_view(num_classes: int) -> float:
    """fp16 full soft labels per view: the reference that L4's ratio (1/40) is measured against."""
    return float(num_classes * VALUE_BYTES)
