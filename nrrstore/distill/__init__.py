"""The method: CIDD (cidd), NRR (nrr), the random-real baseline and the distill pipeline (relabeling: :mod:`nrrstore.labels`).

``from nrrstore.distill import distill, method_config`` gives the pipeline's entry points (loaded lazily).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nrrstore.distill.pipeline import distill, method_config

__all__ = ["distill", "method_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("nrrstore.distill.pipeline"), name)
    raise AttributeError(f"module 'nrrstore.distill' has no attribute {name!r}")
