"""Sizes as people read them: one formatter, so one size prints the same in every command."""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"``: decimal units (1 kB = 1000 bytes, as disks and networks count)."""
    for unit in _UNITS:
        if abs(n) < 1000 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
