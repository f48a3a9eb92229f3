"""Sane maxima of size options that start processes (pure data: the CLI's help reads it without torch)."""

from __future__ import annotations

MAX_WORKERS = 64
"""Most worker processes any command starts: a mistyped --workers would fork thousands of processes and take
every byte of memory before the first one did any work."""
