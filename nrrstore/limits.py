"""Sane maxima of size options that start processes (pure data: the CLI's help reads it without torch)."""

from __future__ import annotations

MAX_WORKERS = 64
"""Most worker processes any command starts: a mistyped --workers would fork thousands of processes and take
every byte of memory before the first one did any work."""

MAX_EPOCHS = 100_000
"""Most epochs any command plans (relabel, students, teachers, conversions): 300-1,000 is the field's range; a
mistyped --epochs 1000000000 would plan years of work and memory for its per-epoch tables before failing."""

MAX_SEEDS = 1_000
"""Most students per `evaluate` cell."""

MAX_ITERATIONS = 1_000_000
"""Most NRR refinement steps per image (the paper's scale is hundreds)."""
