"""nrrstore: produce, store and stream distilled image datasets (NRR-DD).

The entry points a training job uses are importable from here; they load lazily (PEP 562), so that
``import nrrstore`` stays cheap and imports no torch until one of them is used. ``distill`` is not among
them: ``nrrstore.distill`` is the subpackage (``from nrrstore.distill import distill``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from nrrstore.errors import NrrError

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    from nrrstore.distill.pipeline import method_config
    from nrrstore.evaluation import evaluate_store as evaluate
    from nrrstore.format.reader import Store
    from nrrstore.labels.relabel import relabel
    from nrrstore.models.checkpoint import load_teacher
    from nrrstore.train.loader import make_loader, open_store
    from nrrstore.train.student import train_student

#: public name -> (module, attribute)
_LAZY = {
    "Store": ("nrrstore.format.reader", "Store"),
    "open_store": ("nrrstore.train.loader", "open_store"),
    "make_loader": ("nrrstore.train.loader", "make_loader"),
    "method_config": ("nrrstore.distill.pipeline", "method_config"),
    "relabel": ("nrrstore.labels.relabel", "relabel"),
    "evaluate": ("nrrstore.evaluation", "evaluate_store"),
    "train_student": ("nrrstore.train.student", "train_student"),
    "load_teacher": ("nrrstore.models.checkpoint", "load_teacher"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'nrrstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["NrrError", "Store", "__version__", "evaluate", "load_teacher", "make_loader",
           "method_config", "open_store", "relabel", "train_student"]
