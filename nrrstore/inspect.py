"""`inspect`: what is in a store or a folder of shards, as a readable summary, and a contact sheet.

The summary (`format_info`) is meant for people: one labelled line per fact, recorded parameters as
``name value`` pairs grouped by section, long lists shortened; ``--json`` gives the plain data.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nrrstore.errors import os_errors_name
from nrrstore.format.atomic import atomic_open
from nrrstore.format.cams import read_cams
from nrrstore.format.layout import names_a_store
from nrrstore.format.outputs import check_output_file
from nrrstore.format.reader import Store
from nrrstore.progress import Progress
from nrrstore.units import human_bytes


def inspect_path(path: str | os.PathLike[str], grid: str | os.PathLike[str] | None = None,
                 per_class: int = 10, progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Summarize a store (from its manifest) or WebDataset shards (by reading them once).

    ``grid``: also write a contact sheet PNG there (an existing file needs ``overwrite``); the result's
    ``grid`` says how many images per class it shows (fewer than ``per_class`` when a class has fewer).
    """
    if grid is not None:
        check_output_file(grid, overwrite, inputs=[path])
    if names_a_store(path):
        store = Store(path)
        info = store.info()
        if grid is not None:
            shown = save_contact_sheet(_store_samples(store), store.classes, grid, per_class, cams=read_cams(store))
            info["grid"] = {"path": str(grid), "per_class": shown, "asked": per_class, "cams": "cams" in store.manifest.labels}
        return info
    return _inspect_shards(path, grid, per_class, progress)


def _store_samples(store: Store) -> Iterator[tuple[int, np.ndarray, int]]:
    for img in store.iter_images():
        yield img.label, img.pixels, img.index


def _inspect_shards(path: str | os.PathLike[str], grid: Any, per_class: int, progress: Progress | None) -> dict[str, Any]:
    from nrrstore.sources.shards import iter_samples, read_class_names, resolve_shards

    urls = resolve_shards(path)
    names = read_class_names(path)
    counts: Counter[int] = Counter()
    sizes: Counter[str] = Counter()
    keep: list[tuple[int, np.ndarray, int]] = []
    kept: Counter[int] = Counter()
    n = 0
    for s in iter_samples(path, class_names=names, num_classes=len(names) if names else None):
        counts[s.label] += 1
        h, w = s.image.shape[:2]
        sizes[f"{h}x{w}x{1 if s.image.ndim == 2 else s.image.shape[2]}"] += 1
        if grid is not None and kept[s.label] < per_class:
            keep.append((s.label, s.image, n))
            kept[s.label] += 1
        n += 1
        if progress:
            progress("reading", n, None)
    local = [u for u in urls if os.path.exists(u)]
    num_classes = len(names) if names else (max(counts) + 1 if counts else 0)
    class_names = names or [str(i) for i in range(num_classes)]
    info: dict[str, Any] = {
        "path": str(path), "kind": "shards", "num_images": n, "num_classes": num_classes,
        "per_class": {class_names[c]: counts.get(c, 0) for c in range(num_classes)},
        "image_sizes": dict(sizes), "shards": len(urls),
        "components": {"shards": {"files": len(urls), "bytes": sum(os.path.getsize(u) for u in local)}},
        "classes_file": names is not None,
    }
    if grid is not None:
        shown = save_contact_sheet(iter(keep), class_names, grid, per_class)
        info["grid"] = {"path": str(grid), "per_class": shown, "asked": per_class, "cams": False}
    return info


def save_contact_sheet(samples: Iterable[tuple[int, np.ndarray, int]], classes: list[str],
                       out: str | os.PathLike[str], per_class: int = 10, cams: Any = None,
                       cell: int = 64) -> int:
    """A PNG with one row per class of ``per_class`` images (each followed by its CAM when ``cams`` is
    given) under a header naming the columns; returns how many images per class it shows."""
    rows: dict[int, list[tuple[np.ndarray, int]]] = {c: [] for c in range(len(classes))}
    for label, pixels, index in samples:
        if label in rows and len(rows[label]) < per_class:
            rows[label].append((pixels, index))
        if all(len(v) >= per_class for v in rows.values()):
            break
    font = ImageFont.load_default()
    label_w = 8 + max(int(font.getlength(n)) for n in classes) if classes else 8
    shown = max((len(v) for v in rows.values()), default=0)
    per_image = 2 if cams is not None else 1
    cols = max(1, shown) * per_image
    head = 16
    sheet = Image.new("RGB", (label_w + cols * (cell + 2), head + len(classes) * (cell + 2) + 2), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "class", fill="black", font=font)
    for k in range(shown):  # the legend: which column is which
        for t, title in enumerate(["image", "CAM"][:per_image]):
            x = label_w + (k * per_image + t) * (cell + 2)
            draw.text((x + 2, 2), f"{title} {k + 1}" if t == 0 else title, fill="black", font=font)
    for r, c in enumerate(range(len(classes))):
        y = head + 2 + r * (cell + 2)
        draw.text((4, y + cell // 2 - 6), classes[c], fill="black", font=font)
        for k, (pixels, index) in enumerate(rows[c]):
            tiles = [_tile(pixels, cell)]
            if cams is not None:
                tiles.append(_cam_tile(pixels, np.asarray(cams[index]), cell))
            for t, tile in enumerate(tiles):
                sheet.paste(tile, (label_w + (k * per_image + t) * (cell + 2), y))
    with os_errors_name(out), atomic_open(out) as f:
        sheet.save(f, format="PNG")
    return shown


def format_info(info: dict[str, Any], width: int = 100) -> str:
    """The `inspect` summary as text: labelled lines, recorded parameters grouped by section."""
    lines = [f"{info['kind']} {info['path']}"
             + (f" (format {info['format_version']}, nrrstore {info['tool_version']}, created {info['created']})"
                if info["kind"] == "store" else "")]
    what = f"{info['num_images']} in {info['num_classes']} classes, {info['shards']} shard(s)"
    if "image" in info:
        im = info["image"]
        what += f", {im['height']}x{im['width']} {im['mode']} {im['encoding']}"
    else:
        what += ", sizes " + ", ".join(f"{k} ({v})" for k, v in info["image_sizes"].items())
    rows: list[tuple[str, str]] = [("images", what),
                                   ("per class", ", ".join(f"{k} {v}" for k, v in info["per_class"].items()))]
    sizes = [f"{k} {human_bytes(c['bytes'])} ({c['files']} file{'s' if c['files'] != 1 else ''})"
             for k, c in sorted(info["components"].items())]
    if "total_bytes" in info:
        sizes.append(f"total {human_bytes(info['total_bytes'])}")
    rows.append(("bytes", ", ".join(sizes)))
    if info.get("normalization"):
        rows.append(("normalization", _flat(info["normalization"])))
    for section in ("labels", "teacher", "method", "augmentation", "source"):
        value = info.get(section)
        if value:
            rows.extend(_section(section, value))
    if info.get("grid"):
        g = info["grid"]
        note = "" if g["per_class"] >= g["asked"] else f" (the store holds {g['per_class']} per class)"
        rows.append(("contact sheet", f"{g['path']}: {g['per_class']} image(s) per class{note}"
                     + (", each followed by its CAM" if g.get("cams") else "")))
    key_w = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        lines.extend(textwrap.wrap(v, width=width, initial_indent=f"  {k:<{key_w}}",
                                   subsequent_indent=" " * (key_w + 4)) or [f"  {k}"])
    return "\n".join(lines)


def _section(name: str, value: Any, depth: int = 0) -> list[tuple[str, str]]:
    """``name: k v, k v`` for the scalars of a section, then one line per nested section."""
    label = ("  " * depth) + name
    if not isinstance(value, dict):
        return [(label, _value(value))]
    flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
    rows = [(label, _flat(flat))] if flat else [(label, "")]
    for k, v in value.items():
        if isinstance(v, dict) and v:
            rows.extend(_section(k, v, depth + 1))
    return rows


def _flat(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_value(v)}" for k, v in d.items())


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + _flat(v) + "}"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return f"{len(v)} item{'s' if len(v) != 1 else ''}"
        items = [_value(x) for x in v]
        return ("[" + ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "") + "]")
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12] + "..."  # a sha256: its start identifies it
    return str(v)


def _tile(pixels: np.ndarray, cell: int) -> Image.Image:
    img = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").convert("RGB")
    return img.resize((cell, cell), Image.Resampling.NEAREST)


def _cam_tile(pixels: np.ndarray, cam: np.ndarray, cell: int) -> Image.Image:
    """The image darkened where the CAM is low and tinted red where it is high."""
    base = np.asarray(_tile(pixels, cell), dtype=np.float32)
    heat = np.asarray(Image.fromarray(cam.astype(np.uint8)).resize((cell, cell), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    out = base * (0.35 + 0.65 * heat[..., None])
    out[..., 0] = np.maximum(out[..., 0], 255 * heat * 0.8)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
