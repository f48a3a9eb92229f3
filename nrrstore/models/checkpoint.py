"""Teacher checkpoints: a self-describing `torch.save`d dict, read only with ``weights_only=True``.

Layout (format "nrrstore-teacher", version 1)::

    {"format", "version", "arch", "arch_kwargs", "num_classes", "in_channels", "image_size",
     "classes", "normalization": {"mean", "std"}, "state_dict", "train"}

A checkpoint names only a built-in architecture: the file itself never decides which code is imported.
Models from torchvision, timm or the user's own factory are loaded from a spec plus a state-dict file
(`load_teacher("timm:resnet18", weights=..., num_classes=..., ...)`).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nrrstore.devices import resolve_device
from nrrstore.errors import FormatVersionError, NrrError, os_errors_name, unless_out_of_memory
from nrrstore.format.atomic import atomic_write_bytes, file_sha256
from nrrstore.models.registry import ARCHS, build_model, is_builtin, is_external_spec

FORMAT = "nrrstore-teacher"
VERSION = 1
_REQUIRED = ("arch", "num_classes", "in_channels", "image_size", "classes", "normalization")


@dataclass
class Teacher:
    """A frozen classifier plus what is needed to feed it: classes, input size and normalization."""

    model: nn.Module
    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    spec: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x01: Tensor) -> Tensor:
        """[0,1] pixels ([C,H,W] or [N,C,H,W]) -> the teacher's input space."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """The teacher's input space -> [0,1] pixels (inverse of `normalize`, no clamping)."""
        mean, std = self._stats(x)
        return x * std + mean


def teacher_record(teacher: Teacher) -> dict[str, Any]:
    """The manifest's ``teacher`` section: the one record that distill, relabel and import write.

    ``spec`` (the checkpoint path or architecture spec as given) is what `evaluate` loads when no teacher
    is passed; ``sha256`` is what it, `verify --teacher` and resume checks compare.
    """
    return {"arch": teacher.arch, "spec": teacher.spec, "arch_kwargs": dict(teacher.arch_kwargs),
            "sha256": teacher.sha256, "num_classes": teacher.num_classes, "classes": list(teacher.classes),
            "in_channels": teacher.in_channels, "image_size": teacher.image_size,
            "normalization": {"mean": list(teacher.mean), "std": list(teacher.std)}}


def teacher_record_problem(record: Mapping[str, Any]) -> str | None:
    """Why a store's teacher record does not lead back to its teacher here, or None when it does.

    Resolving means what `evaluate` does without ``--teacher``: ``spec`` is a checkpoint file on this
    machine whose sha256 is the recorded one.
    """
    if not record.get("sha256"):
        return "the store records no teacher (sha256)"
    spec = record.get("spec")
    if not spec:
        return "the teacher record names no checkpoint (spec; stores relabelled before 0.3 lack it)"
    if not Path(str(spec)).is_file():
        kind = "an architecture spec" if is_builtin(str(spec)) or is_external_spec(str(spec)) else "not found here"
        return f"the recorded teacher {spec} is {kind}"
    if file_sha256(str(spec)) != record["sha256"]:
        return f"the recorded teacher {spec} is not the one that labelled the store (its sha256 differs)"
    return None


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """Checksum of names, dtypes, shapes and values: identifies weights that did not come from a file."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_teacher(path: str | os.PathLike[str], model: nn.Module, meta: Mapping[str, Any], *, half: bool = False) -> None:
    """Write `model`'s weights with `meta` (the keys of the layout above except format/version/state_dict).

    ``half`` stores floating-point tensors as fp16 (half the bytes; loading casts them back to the model's fp32).

    The state dict is checked against `meta["arch"]` first, so every file written here loads back.
    Atomic: written under a temporary name in the same folder, then renamed.
    """
    path = Path(path)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise NrrError(path, f"teacher metadata lacks {', '.join(missing)}")
    try:
        record = _record(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise NrrError(path, f"bad teacher metadata: {type(e).__name__}: {e}") from None
    _check_meta(path, record)
    if not is_builtin(record["arch"]):
        raise NrrError(path, f"a teacher checkpoint names a built-in architecture ({', '.join(ARCHS)}), "
                             f"not {record['arch']!r}; save a plain state dict and load it with a spec and weights=")
    for key in ("arch_kwargs", "train"):
        bad = _unsafe_value(record[key])
        if bad:
            raise NrrError(path, f"teacher metadata '{key}' holds {bad}; "
                                 "only plain numbers, strings, lists and dicts load safely")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    reference = _build(path, record)
    problem = _mismatch(reference, state)
    if problem:
        raise NrrError(path, f"model does not match architecture '{record['arch']}': {problem}")
    record["state_dict"] = state
    save_torch_atomic(record, path)


def save_torch_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` under a temporary name, renamed when complete; a failed write names ``path``.

    Serialized in memory first: torch's zip writer turns a write error (a full disk) into a
    ``RuntimeError`` without a cause, while a plain write reports it as what it is.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    with os_errors_name(path):
        atomic_write_bytes(path, buf.getvalue())  # a reader never sees half a checkpoint


def _record(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint dict without its state dict, in plain Python types."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": str(meta["arch"]),
        "arch_kwargs": dict(meta.get("arch_kwargs") or {}),
        "num_classes": int(meta["num_classes"]),
        "in_channels": int(meta["in_channels"]),
        "image_size": int(meta["image_size"]),
        "classes": [str(c) for c in meta["classes"]],
        "normalization": {
            "mean": [float(v) for v in meta["normalization"]["mean"]],
            "std": [float(v) for v in meta["normalization"]["std"]],
        },
        "train": dict(meta.get("train") or {}),
    }


def load_teacher(
    path_or_spec: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    normalization: Mapping[str, Sequence[float]] | None = None,
    weights: str | os.PathLike[str] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Teacher:
    """A teacher from an nrrstore checkpoint file, or from an architecture spec plus keyword metadata.

    For a spec (built-in name, ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory``) pass
    `num_classes`, `image_size` and `normalization` ({"mean": [...], "std": [...]}); `in_channels`
    defaults to the length of the mean, `classes` to "0".."C-1"; `weights` is a state-dict file
    (a raw state dict, or one under "state_dict"/"model"; a DDP "module." prefix is stripped).
    """
    device = resolve_device(device)
    target = os.fspath(path_or_spec)
    spec_args = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
                 "classes": classes, "normalization": normalization, "weights": weights, "arch_kwargs": arch_kwargs}
    if os.path.isfile(target):
        given = [k for k, v in spec_args.items() if v is not None]
        if given:
            raise NrrError(target, f"{', '.join(given)} apply to an architecture spec, not to a checkpoint file")
        teacher = _from_checkpoint(target)
    elif is_builtin(target) or is_external_spec(target):
        teacher = _from_spec(target, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                             classes=classes, normalization=normalization, weights=weights, arch_kwargs=arch_kwargs)
    else:
        raise NrrError(target, "no such teacher checkpoint file (nor an architecture spec)")
    teacher.model.to(device).eval()
    teacher.model.requires_grad_(False)
    return teacher


def _from_checkpoint(path: str) -> Teacher:
    obj, sha = _read_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise NrrError(path, f"not an nrrstore teacher checkpoint (no format '{FORMAT}'); "
                             "for a plain state dict use load_teacher(ARCH, weights=PATH, ...)")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise NrrError(path, f"teacher checkpoint has an invalid version {version!r}")
    if version > VERSION:
        raise FormatVersionError(path, f"teacher checkpoint version {version} is newer than this nrrstore "
                                       f"reads ({VERSION}); upgrade nrrstore")
    missing = [k for k in (*_REQUIRED, "state_dict") if k not in obj]
    if missing:
        raise NrrError(path, f"teacher checkpoint lacks {', '.join(missing)}")
    if not isinstance(obj["arch"], str) or not is_builtin(obj["arch"]):
        raise NrrError(path, f"checkpoint architecture {obj['arch']!r} is not built in (known: {', '.join(ARCHS)}); "
                             "load other models with a spec and weights=")
    _check_meta(path, obj)
    model = _build(path, obj)
    _load_state(path, model, obj["state_dict"], obj["arch"])
    norm = obj["normalization"]
    return Teacher(
        model=model, arch=obj["arch"], num_classes=obj["num_classes"], in_channels=obj["in_channels"],
        image_size=obj["image_size"], classes=list(obj["classes"]), mean=tuple(map(float, norm["mean"])),
        std=tuple(map(float, norm["std"])), sha256=sha, spec=path, arch_kwargs=dict(obj.get("arch_kwargs") or {}),
        train=dict(obj.get("train") or {}),
    )


def _from_spec(
    spec: str,
    *,
    num_classes: int | None,
    in_channels: int | None,
    image_size: int | None,
    classes: Sequence[str] | None,
    normalization: Mapping[str, Sequence[float]] | None,
    weights: str | os.PathLike[str] | None,
    arch_kwargs: Mapping[str, Any] | None,
) -> Teacher:
    if num_classes is None or image_size is None or normalization is None:
        raise NrrError(None, f"teacher '{spec}' is an architecture spec: "
                             "also give num_classes, image_size and normalization")
    mean = [float(v) for v in normalization["mean"]]
    std = [float(v) for v in normalization["std"]]
    record: dict[str, Any] = {
        "arch": spec, "arch_kwargs": dict(arch_kwargs or {}), "num_classes": int(num_classes),
        "in_channels": int(in_channels if in_channels is not None else len(mean)), "image_size": int(image_size),
        "classes": [str(c) for c in (classes if classes is not None else range(num_classes))],
        "normalization": {"mean": mean, "std": std},
    }
    _check_meta(None, record)
    model = _build(None, record)
    if weights is not None:
        wpath = os.fspath(weights)
        obj, sha = _read_torch(wpath)
        _load_state(wpath, model, _unwrap_state_dict(wpath, obj), spec)
    else:
        sha = state_dict_sha256(model.state_dict())
    return Teacher(
        model=model, arch=spec, num_classes=record["num_classes"], in_channels=record["in_channels"],
        image_size=record["image_size"], classes=record["classes"], mean=tuple(mean), std=tuple(std),
        sha256=sha, spec=spec, arch_kwargs=record["arch_kwargs"],
    )


def _read_torch(path: str) -> tuple[Any, str]:
    """Load a torch file safely; returns (object, sha256 of the file bytes) from a single read."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NrrError(path, "no such file") from None
    except OSError as e:
        raise NrrError(path, f"cannot read: {e.strerror or e}") from None
    # torch.save writes a zip archive (or, in the legacy format, a pickle starting with PROTO 0x80).
    if not data.startswith((b"PK\x03\x04", b"\x80")):
        raise NrrError(path, "not a torch checkpoint (expected a file written by torch.save)")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle.UnpicklingError for refused globals; other types for corrupt files
        unless_out_of_memory(e)
        raise NrrError(path, f"not a safe checkpoint: {_short_reason(e)}") from None
    return obj, hashlib.sha256(data).hexdigest()


def _short_reason(e: BaseException) -> str:
    """The informative line of torch's multi-paragraph weights_only message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln
    return (lines[0] if lines else "") or type(e).__name__


def _check_meta(path: str | os.PathLike[str] | None, rec: Mapping[str, Any]) -> None:
    n, c, s = rec["num_classes"], rec["in_channels"], rec["image_size"]
    if not all(isinstance(v, int) and v >= 1 for v in (n, c, s)):
        raise NrrError(path, "num_classes, in_channels and image_size must be positive integers, "
                             f"got {n!r}, {c!r}, {s!r}")
    classes = rec["classes"]
    if not isinstance(classes, list) or len(classes) != n or not all(isinstance(x, str) for x in classes):
        shown = classes[:6] if isinstance(classes, list) else classes
        more = f" ... ({len(classes)} in all)" if isinstance(classes, list) and len(classes) > 6 else ""
        raise NrrError(path, f"classes must be {n} names, got {shown!r}{more}")
    norm = rec["normalization"]
    if not isinstance(norm, dict) or not isinstance(norm.get("mean"), list) or not isinstance(norm.get("std"), list):
        raise NrrError(path, "normalization must be {'mean': [...], 'std': [...]}")
    if len(norm["mean"]) != c or len(norm["std"]) != c:
        raise NrrError(path, f"normalization needs {c} means and stds (one per input channel)")
    numbers = [*norm["mean"], *norm["std"]]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise NrrError(path, "normalization mean and std must be finite numbers")
    if not all(v > 0 for v in norm["std"]):
        raise NrrError(path, "normalization std values must be positive")
    if not isinstance(rec.get("arch_kwargs", {}), dict):
        raise NrrError(path, "arch_kwargs must be a dict")


def _unsafe_value(value: Any) -> str | None:
    """Name of the first value that torch.load(weights_only=True) would refuse or that is not plain data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        return next((b for b in map(_unsafe_value, value) if b), None)
    if isinstance(value, dict):
        for k, v in value.items():
            bad = (None if isinstance(k, str) else f"a {type(k).__name__} key") or _unsafe_value(v)
            if bad:
                return bad
        return None
    return f"a {type(value).__name__}"


def _build(path: str | os.PathLike[str] | None, rec: Mapping[str, Any]) -> nn.Module:
    try:
        return build_model(rec["arch"], rec["num_classes"], rec["in_channels"], rec["image_size"],
                           **rec.get("arch_kwargs", {}))
    except NrrError as e:
        raise NrrError(path, e.problem) from None


def _unwrap_state_dict(path: str, obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj.get("state_dict")
    elif isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, Mapping) or not obj:
        raise NrrError(path, "no state dict found (expected a dict of tensors, or one under 'state_dict' or 'model')")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatch(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """A one-line summary of how `state` differs from `model`'s own state dict, or None."""
    expected = model.state_dict()
    problems = []
    nontensor = [k for k, v in state.items() if not isinstance(v, Tensor)]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(nontensor))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in state and k not in nontensor and state[k].shape != expected[k].shape]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                         ("not a tensor", nontensor)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(map(str, items[:3]))}{more}")
    return "; ".join(problems) or None


def _load_state(path: str, model: nn.Module, state: Any, arch: str) -> None:
    if not isinstance(state, Mapping):
        raise NrrError(path, "state_dict is not a dict of tensors")
    problem = _mismatch(model, state)
    if problem:
        raise NrrError(path, f"state dict does not match architecture '{arch}': {problem}")
    model.load_state_dict(state, strict=True)


def class_mapping_warning(teacher: Teacher, names: list[str] | None, what: str) -> str | None:
    """The warning for class names that differ from the teacher's (same count): labels are matched by index,
    so say which teacher class each of ``what``'s classes is taken as. None when they agree or either side
    has no names."""
    theirs = list(teacher.classes or [])
    if not names or not theirs or list(names) == theirs or len(names) != len(theirs):
        return None
    pairs = [f"{a!r} -> {b!r}" for a, b in zip(names, theirs, strict=True) if a != b]
    shown = ", ".join(pairs[:3]) + (f", ... ({len(pairs)} differ)" if len(pairs) > 3 else "")
    return (f"the class names of {what} differ from the teacher's; class i was taken as the teacher's class i: {shown} "
            "(name the classes with --classes when preparing, or check that this is the right teacher)")
