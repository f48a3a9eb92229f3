"""Sizes as people read them: one formatter, so one size prints the same in every command, and one parser."""

from __future__ import annotations

import re

from nrrstore.errors import NrrError

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_FACTORS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
            "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"``: decimal units (1 kB = 1000 bytes, as disks and networks count)."""
    for unit in _UNITS:
        if abs(n) < 1000 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def parse_bytes(size: int | str, what: str = "size") -> int:
    """``"20GiB"`` -> ``21474836480``: a byte count, or a number with a unit (B, kB/MB/GB/TB decimal as
    :func:`human_bytes` prints them, KiB/MiB/GiB/TiB binary; case-insensitive); `NrrError` naming ``what``."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    m = _SIZE_RE.match(size) if isinstance(size, str) else None
    factor = _FACTORS.get(m.group(2).lower()) if m else None
    if m is None or factor is None:
        raise NrrError(None, f"{what} {size!r} is not a size (e.g. 500MB, 20GiB or a number of bytes)")
    return int(float(m.group(1)) * factor)
