"""The shipped defaults of `distill`: one table of presets, the single source of every default value.

`CiddConfig` and `NrrConfig` take their defaults from the ``nrr`` preset here, `method_config` builds every
preset from this table, the CLI's ``distill --help`` prints its defaults from :func:`default_text`, and each
store's manifest records the resolved values. README's preset table is checked against :func:`preset_table`.
The study that chose these values is in benchmarks/RESULTS.md. Pure data: importing it costs no torch.
"""

from __future__ import annotations

import math
from typing import Any

METHODS = ("nrr", "rded", "random")
AUTO = "auto"
"""A value resolved per run: ``factor`` by the image size (:func:`default_factor`), the ``nrr`` preset's
``mipc`` by the IPC (:func:`nrr_pool`)."""

NRR_CIDD: dict[str, Any] = {
    # NRR-DD's choices (CAM crop per image, low confidence among the high-CAM half) and the study's:
    # only crops the teacher classifies correctly, at least half the image, a small random pool.
    "factor": AUTO, "mipc": AUTO, "num_crop": 5, "per_image": "cam", "select": "low", "cam_top": 0.5,
    "scale": (0.5, 1.0), "ratio": (1.0, 1.0), "sources": "random", "correct_only": True, "cam_score": "share",
}
NRR_REFINE: dict[str, Any] = {
    # alpha_bn 1: BN statistics must weigh as much as the CE term to keep refined pixels natural.
    "eps": 0.5, "lr": 0.01, "iterations": 200, "alpha_bn": 1.0, "optimizer": "adam", "betas": (0.5, 0.9),
    "first_bn_weight": 10.0, "refine": True,
}
_NO_REFINE: dict[str, Any] = {**NRR_REFINE, "alpha_bn": 0.01, "refine": False}  # SRe2L's r_bn if refined anyway
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "nrr": (NRR_CIDD, NRR_REFINE),
    # RDED's protocol: 300 images per class, crops down to 8% of the image, the most confident crops
    "rded": ({**NRR_CIDD, "mipc": 300, "per_image": "score", "select": "high", "cam_top": 1.0, "scale": (0.08, 1.0),
              "correct_only": False}, _NO_REFINE),
    # random real images: one whole image per synthetic image
    "random": ({**NRR_CIDD, "factor": 1, "mipc": 300, "num_crop": 1, "per_image": "score", "select": "random",
                "cam_top": 1.0, "scale": (1.0, 1.0), "correct_only": False}, _NO_REFINE),
}
LEGACY_CIDD: dict[str, Any] = {"sources": "first", "correct_only": False, "cam_score": "share", "crop_sampler": 1}
"""What a manifest meant by a CIDD key it does not record (each was added after v0.1, with v0.1's behaviour)."""


def default_factor(image_size: int) -> int:
    """RDED's factor: 2 patches per side at ImageNet resolutions, whole crops at 32/64 px."""
    return 2 if image_size >= 128 else 1


def nrr_pool(ipc: int, factor: int, cam_top: float) -> int:
    """The ``nrr`` preset's real images per class: 1.5x the fewest whose CAM top ``cam_top`` fills the IPC,
    ``ceil(1.5 * ipc * factor**2 / cam_top)`` (30 at IPC 10, factor 1, cam_top 0.5). Larger pools, which
    let the low-confidence choice reach for harder images, trained worse students in the study."""
    return max(1, math.ceil(1.5 * ipc * factor * factor / cam_top))


def preset_values(method: str, ipc: int, image_size: int, cidd: dict[str, Any] | None = None,
                  nrr: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The preset ``method`` at ``ipc`` and ``image_size`` with overrides (None values ignored), resolved:
    ``(CiddConfig keyword arguments, NrrConfig keyword arguments)``."""
    base_c, base_n = PRESETS[method]
    c_over = {k: v for k, v in (cidd or {}).items() if v is not None}
    c = {**base_c, **c_over, "ipc": ipc}
    if c["factor"] == AUTO:
        c["factor"] = default_factor(image_size)
    if c["mipc"] == AUTO:
        c["mipc"] = nrr_pool(ipc, c["factor"], c["cam_top"])
    c = {k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}
    n = {**base_n, **{k: v for k, v in (nrr or {}).items() if v is not None}}
    return c, n


DEFAULT_JPEG_SIZE = 128
"""From this image size up, distill stores JPEG by default (measured: benchmarks/jpeg_quality.py)."""
DEFAULT_JPEG_QUALITY = 90


def default_image_encoding(image_size: int) -> tuple[str, int | None]:
    """``(format, quality)`` distill stores by default: JPEG quality 90 at >= 128 px, else lossless PNG.

    Measured at 128 px (benchmarks/RESULTS.md, "distill's image encoding"): JPEG 90 stores about two thirds of
    PNG's bytes with student top-1 within the seeds' spread; small images stay PNG, where JPEG's 8x8
    blocks are a large share of the picture and PNG is small anyway.
    """
    return ("jpg", DEFAULT_JPEG_QUALITY) if image_size >= DEFAULT_JPEG_SIZE else ("png", None)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return str(value[0]) if value[1] == 1.0 else f"{value[0]}-{value[1]}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else f"{value:g}"


def default_text(key: str) -> str:
    """``"default: nrr X, rded Y, random Z"`` for a CIDD or NRR key (one value when the presets agree)."""
    part = 0 if key in NRR_CIDD else 1
    values = {m: _show(PRESETS[m][part][key]) for m in METHODS}
    if len(set(values.values())) == 1:
        return f"default {values['nrr']}"
    return "default: " + ", ".join(f"{m} {v}" for m, v in values.items())


TABLE_KEYS = ("factor", "mipc", "num_crop", "per_image", "select", "cam_top", "scale", "correct_only", "sources",
              "refine", "alpha_bn", "iterations", "lr", "eps")


def preset_table() -> str:
    """README's table of the presets (a test keeps README equal to it)."""
    rows = ["| option | " + " | ".join(f"`{m}`" for m in METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for key in TABLE_KEYS:
        part = 0 if key in NRR_CIDD else 1
        rows.append(f"| {key} | " + " | ".join(_show(PRESETS[m][part][key]) for m in METHODS) + " |")
    return "\n".join(rows)
