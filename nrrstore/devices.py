"""Checked torch devices and autocast precisions: a wrong ``--device`` or ``--amp`` is one line, not a traceback.

Why here: every job that takes a device (distill, relabel, the loader, student and teacher
training) must refuse the same way, before any work starts, with a message that names the
device and says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nrrstore.errors import NrrError

AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""``--amp`` values and the autocast dtypes they select (None: float32)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here, else an `NrrError` naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NrrError(None, f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)")
            raise NrrError(None, f"device {str(device)!r}: CUDA is not available: {why}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise NrrError(None, f"device {str(device)!r}: only {count} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise NrrError(None, f"device {str(device)!r}: MPS is not available on this machine")
    elif dev.type != "cpu" and not _backend_available(dev.type):
        raise NrrError(None, f"device {str(device)!r} is not available on this machine")
    return dev


def _backend_available(kind: str) -> bool:
    module = getattr(torch, kind, None)
    available = getattr(module, "is_available", None)
    return bool(available and available())


def amp_dtype(amp: str | None, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` ("bf16", "fp16" or None) on ``device``; refuses unsupported pairs."""
    if amp is None or amp in ("none", "fp32"):
        return None
    if amp not in AMP_MODES:
        raise NrrError(None, f"unknown --amp {amp!r}; use bf16 or fp16 (default: fp32, no autocast)")
    dev = resolve_device(device)
    dtype = AMP_MODES[amp]
    problem = None
    if not torch.amp.autocast_mode.is_autocast_available(dev.type):
        problem = "torch has no autocast for this device"
    elif dev.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        problem = "this GPU has no bfloat16 support (use --amp fp16)"
    else:
        try:  # autocast disables itself (with a warning) for dtypes a backend lacks
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.autocast(dev.type, dtype=dtype):
                    if not torch.is_autocast_enabled(dev.type):
                        problem = f"autocast to {amp} is not supported here"
        except RuntimeError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else "autocast failed"
    if problem:
        raise NrrError(None, f"--amp {amp} on device {str(device)!r}: {problem}")
    return dtype


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` when ``dtype`` is given, else nothing (float32)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield
