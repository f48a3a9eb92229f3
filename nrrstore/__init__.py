"""nrrstore: produce, store and stream distilled image datasets (NRR-DD)."""

from __future__ import annotations

__version__ = "0.1.0"

from nrrstore.errors import NrrError

__all__ = ["NrrError", "__version__"]
