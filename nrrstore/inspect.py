"""`inspect`: what is in a store or a folder of shards, as a readable summary, and a contact sheet.

The summary (`format_info`) is meant for people: one labelled line per fact, recorded parameters as
``name value`` pairs grouped by section, long lists shortened; ``--json`` gives the plain data.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nrrstore.errors import os_errors_name, path_text
from nrrstore.format.atomic import atomic_open
from nrrstore.format.cams import read_cams
from nrrstore.format.layout import names_a_store
from nrrstore.format.outputs import check_output_file
from nrrstore.format.reader import Store
from nrrstore.plots import output_format
from nrrstore.progress import Progress
from nrrstore.units import human_bytes

# The extension decides the sheet's format; Pillow writes these without matplotlib.
SHEET_FORMATS: Mapping[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_MARGIN, _GAP, _KEY_H = 8, 2, 14
_CAM_ALPHA = 0.6
_INFERNO = np.array([(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85), (227, 89, 51),
                     (249, 140, 10), (249, 201, 50), (252, 255, 164)], dtype=np.float32)


def inspect_path(path: str | os.PathLike[str], grid: str | os.PathLike[str] | None = None,
                 per_class: int = 10, progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Summarize a store (from its manifest) or WebDataset shards (by reading them once).

    ``grid``: also write a contact sheet there (PNG or JPEG by its extension, any other refused before
    anything is read; an existing file needs ``overwrite``); the result's ``grid`` says how many images per
    class it shows (fewer than ``per_class`` when a class has fewer).
    """
    if grid is not None:
        output_format(grid, SHEET_FORMATS, "contact sheet")
        check_output_file(grid, overwrite, inputs={"PATH": path}, option="--grid")
    if names_a_store(path):
        store = Store(path)
        info = store.info()
        if grid is not None:
            shown = save_contact_sheet(_store_samples(store), store.classes, grid, per_class, cams=read_cams(store),
                                       title=f"contact sheet of {path_text(path)}")
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
        shown = save_contact_sheet(iter(keep), class_names, grid, per_class, title=f"contact sheet of {path_text(path)}")
        info["grid"] = {"path": str(grid), "per_class": shown, "asked": per_class, "cams": False}
    return info


def save_contact_sheet(samples: Iterable[tuple[int, np.ndarray, int]], classes: list[str],
                       out: str | os.PathLike[str], per_class: int = 10, cams: Any = None,
                       cell: int = 64, title: str | None = None) -> int:
    """A titled sheet with one row per class of ``per_class`` images (each followed by its CAM when ``cams``
    is given, with a colour key) under column headers; PNG or JPEG by ``out``'s extension. Returns how many
    images per class it shows.

    Drawn with Pillow, not matplotlib: it needs no extra, shows the stored pixels (nearest-neighbour tiles),
    and stays one plain image at 1000 classes, where a figure would exceed a renderer's size limit.
    """
    fmt = output_format(out, SHEET_FORMATS, "contact sheet")
    rows: dict[int, list[tuple[np.ndarray, int]]] = {c: [] for c in range(len(classes))}
    for label, pixels, index in samples:
        if label in rows and len(rows[label]) < per_class:
            rows[label].append((pixels, index))
        if all(len(v) >= per_class for v in rows.values()):
            break
    shown = max((len(v) for v in rows.values()), default=0)
    per_image = 2 if cams is not None else 1
    pitch = cell + _GAP
    font, small, big = _font(13), _font(11), _font(15)
    line, small_line, big_line = _line_height(font), _line_height(small), _line_height(big)
    # Class names wrap inside their own row (as many lines as the row holds, the rest cut with "..."): a long
    # name can neither widen the sheet without bound nor run into the next row.
    name_w = max([_text_w(font, "class"), *(min(_text_w(font, n), max(3 * cell, 160)) for n in classes)])
    names = [_fit(n, font, name_w, max(1, cell // line)) for n in classes]
    label_w = _MARGIN + name_w + _MARGIN
    width = max(label_w + max(1, shown) * per_image * pitch + _MARGIN, 320)  # room for the title and key
    text_w = width - 2 * _MARGIN
    what = (f"{len(classes)} class{'es' if len(classes) != 1 else ''}, {shown} image(s) per class"
            + (", each followed by its CAM" if cams is not None else ""))
    title_lines = _wrap(title or "contact sheet", big, text_w)
    what_lines = _wrap(what, small, text_w)
    head_y = _MARGIN + len(title_lines) * big_line + len(what_lines) * small_line + 8
    grid_y = head_y + small_line + 4
    key_lines = _wrap("CAM colour key: class activation from 0 (none) to 1 (strongest), blended over the "
                      "image in grey", small, text_w) if cams is not None else []
    key_y = grid_y + len(classes) * pitch + 10
    height = key_y + (len(key_lines) * small_line + 4 + _KEY_H + small_line + _MARGIN if cams is not None else 0)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = _MARGIN
    for text in title_lines:
        _text(draw, (_MARGIN, y), text, big)
        y += big_line
    for text in what_lines:
        _text(draw, (_MARGIN, y), text, small, (80, 80, 80))
        y += small_line
    _text(draw, (_MARGIN, head_y), "class", small)
    for col in range(shown * per_image):  # a header per column, the longest form that fits its width
        k, t = divmod(col, per_image)
        forms = [f"image {k + 1}", f"{k + 1}"] if t == 0 else ["CAM", "C"]
        text = next((f for f in forms if _text_w(small, f) <= cell), "")
        x = label_w + col * pitch + (cell - _text_w(small, text)) // 2
        _text(draw, (x, head_y), text, small)
    for c in range(len(classes)):
        top = grid_y + c * pitch
        ty = top + (cell - len(names[c]) * line) // 2
        for text in names[c]:
            _text(draw, (_MARGIN, ty), text, font)
            ty += line
        for k, (pixels, index) in enumerate(rows[c]):
            tiles = [_tile(pixels, cell)]
            if cams is not None:
                tiles.append(_cam_tile(pixels, np.asarray(cams[index]), cell))
            for t, tile in enumerate(tiles):
                sheet.paste(tile, (label_w + (k * per_image + t) * pitch, top))
    if cams is not None:
        _draw_cam_key(sheet, draw, key_lines, small, small_line, key_y)
    with os_errors_name(out), atomic_open(out) as f:
        sheet.save(f, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return shown


def _draw_cam_key(sheet: Image.Image, draw: ImageDraw.ImageDraw, lines: list[str], font: Any, line: int,
                  y: int) -> None:
    """The colour bar of the CAM colours from 0 to 1, ticked at 0, 0.5 and 1, under its label."""
    for text in lines:
        _text(draw, (_MARGIN, y), text, font)
        y += line
    y += 4
    bar_w = min(256, sheet.width - 2 * _MARGIN)
    ramp = _cam_colours(np.linspace(0.0, 1.0, bar_w, dtype=np.float32))
    sheet.paste(Image.fromarray(np.repeat(ramp[None], _KEY_H, axis=0)), (_MARGIN, y))
    draw.rectangle((_MARGIN - 1, y - 1, _MARGIN + bar_w, y + _KEY_H), outline="black")
    for v in (0.0, 0.5, 1.0):
        text = f"{v:g}"
        x = _MARGIN + round(v * (bar_w - 1))
        draw.line((x, y + _KEY_H, x, y + _KEY_H + 3), fill="black")
        _text(draw, (min(max(_MARGIN, x - _text_w(font, text) // 2), _MARGIN + bar_w - _text_w(font, text)),
                     y + _KEY_H + 3), text, font)


def _font(size: int) -> Any:
    """Pillow's own scalable font (no font file to find); its older bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _space(font: Any) -> float:
    """A word space a third of the font size: Pillow's default font's own (a sixth) reads as no space."""
    return max(float(font.getlength(" ")), 0.33 * float(getattr(font, "size", 0)))


def _text_w(font: Any, text: str) -> int:
    words = text.split(" ")
    return math.ceil(sum(font.getlength(w) for w in words) + _space(font) * (len(words) - 1))


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: Any = "black") -> None:
    """``draw.text`` word by word, with the spaces `_text_w` measures."""
    x, y = xy
    for word in text.split(" "):
        if word:
            draw.text((round(x), y), word, fill=fill, font=font)
        x += font.getlength(word) + _space(font)


def _line_height(font: Any) -> int:
    return int(font.getbbox("Ag|")[3]) + 3


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels: at spaces, and inside words longer than a line."""
    lines: list[str] = []
    cur = ""
    for word in text.split():
        while _text_w(font, word) > width and len(word) > 1:
            if cur:
                lines.append(cur)
                cur = ""
            cut = max(1, max((k for k in range(1, len(word)) if _text_w(font, word[:k]) <= width), default=1))
            lines.append(word[:cut])
            word = word[cut:]
        trial = f"{cur} {word}" if cur else word
        if cur and _text_w(font, trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return [*lines, cur] if cur or not lines else lines


def _fit(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """`_wrap`, cut to ``max_lines`` with "..." ending the last one."""
    lines = _wrap(text, font, width)
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and _text_w(font, last + "...") > width:
        last = last[:-1]
    return [*lines[:max_lines - 1], last + "..."]


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
    """The CAM in the key's colours, blended over the image in grey (the image's own colours would
    read as activation)."""
    grey = np.asarray(_tile(pixels, cell).convert("L"), dtype=np.float32)[..., None]
    heat = np.asarray(Image.fromarray(cam.astype(np.uint8)).resize((cell, cell), Image.Resampling.BILINEAR),
                      dtype=np.float32) / 255.0
    out = (1 - _CAM_ALPHA) * grey + _CAM_ALPHA * _cam_colours(heat).astype(np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def _cam_colours(heat: np.ndarray) -> np.ndarray:
    """CAM values in [0, 1] -> uint8 RGB on matplotlib's "inferno" scale (dark = none, yellow = strongest),
    interpolated from its stops so the sheet needs no matplotlib."""
    stops = np.linspace(0.0, 1.0, len(_INFERNO))
    return np.stack([np.interp(heat, stops, _INFERNO[:, i]) for i in range(3)], axis=-1).round().astype(np.uint8)
