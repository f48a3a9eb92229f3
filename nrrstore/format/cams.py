"""CAM masks of a store's synthetic images as a zarr (format 3) array ``cams.zarr``: uint8 [N, H, W].

Optional (``distill --save-cams``): ``inspect --grid`` draws them beside the images. Chunks hold
up to 1024 whole masks, written one chunk at a time, so memory stays one chunk whatever N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from nrrstore.format import fs
from nrrstore.format.layout import CAMS_PATH

if TYPE_CHECKING:
    from nrrstore.format.reader import Store
    from nrrstore.format.writer import StoreWriter

CHUNK = 1024


def write_cams(writer: StoreWriter, count: int, height: int, width: int,
               rows: Callable[[int, int], np.ndarray]) -> dict[str, Any]:
    """Write the CAMs of a store being written; ``rows(lo, hi)`` gives masks ``lo..hi-1`` (uint8 [k, H, W]).

    Returns the manifest's ``labels.cams`` section.
    """
    import zarr

    shape = (int(count), int(height), int(width))
    arr = zarr.create_array(str(writer.file_path(CAMS_PATH, "cams")), shape=shape,
                            chunks=(min(shape[0], CHUNK), shape[1], shape[2]), dtype="uint8", zarr_format=3,
                            fill_value=0)
    step = arr.chunks[0]
    for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        arr[lo:hi] = rows(lo, hi)
    return {"path": CAMS_PATH, "shape": list(shape), "dtype": "uint8"}


def read_cams(store: Store) -> Any:
    """The store's CAM masks (a zarr array, [N, H, W] uint8) when it keeps them, else None."""
    section = store.manifest.labels.get("cams")
    if not section:
        return None
    import zarr

    return zarr.open_array(fs.zarr_source(store.path / section.get("path", CAMS_PATH)), mode="r")
