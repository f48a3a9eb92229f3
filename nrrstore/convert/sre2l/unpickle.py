"""Loading SRe2L label files safely: they are pickles, and a pickle can run any code.

Each ``batch_{b}.tar`` is a ``torch.save``d list ``[coords, flip, partner, lam, box, logits]``. It is
read with ``torch.load(weights_only=True)`` admitting, on top of tensors, only numpy *integer*
scalars (and the integer dtypes they need): the box of SRe2L's CutMix is a list of numpy integers.
Anything else is refused before it is built, and every malformed item is an `NrrError` naming the
file and the item.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nrrstore.errors import NrrError, unless_out_of_memory


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
        unless_out_of_memory(exc)
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text) or re.search(r"unrecognized function (.+?)(?: which|$)", text, re.MULTILINE)
        if found:
            raise NrrError(path, f"refused to load: it needs {found.group(1)}, which an SRe2L label file never "
                                 "holds (only tensors, numbers and numpy integers are admitted)") from None
        inner = re.search(r"WeightsUnpickler error:\s*(\S.*?)\s*(?:\n\n|$)", text, re.DOTALL)
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
    bx: tuple[int, int, int, int] | None = None
    if box is not None:
        vals = [_as_int(v) for v in box] if isinstance(box, (list, tuple)) and len(box) == 4 else [None]
        ints = [v for v in vals if v is not None]
        if len(ints) != 4:
            raise bad("item 4 (CutMix box) must be None or 4 integers [x1, y1, x2, y2]")
        bx = (ints[0], ints[1], ints[2], ints[3])
    return BatchRecord(c, fl, p, lam_f, bx, logits.detach())
