"""`evaluate`'s chart (Pillow, not matplotlib: already a dependency, and the same bytes on every machine).

Left: bars of top-1 per label kind and image set. Right, when the store was evaluated with two or more
label kinds that cost bytes: accuracy against label bytes per view on a log axis, one point per kind
(mean, error bar = std over seeds), the accuracy-per-byte front joined, one-hot labels (no bytes per
view) as a dashed line.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nrrstore.errors import os_errors_name
from nrrstore.format.atomic import atomic_open
from nrrstore.format.outputs import check_output_file


def plot_result(result: dict[str, Any], path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The chart of an `evaluate` result as a PNG; an existing ``path`` is refused unless ``overwrite``."""
    check_output_file(path, overwrite)
    img = _bars(result)
    per_view = (result.get("label_bytes") or {}).get("codecs") or {}
    points = [(k, per_view[k], c["mean"], c["std"]) for k, c in result["table"].get("store", {}).items()
              if k in per_view]
    if len(points) >= 2:
        onehot = result["table"].get("store", {}).get("onehot")
        front = plot_front(points, None if onehot is None else onehot["mean"],
                           f"accuracy per label byte, IPC {result['ipc']}")
        both = Image.new("RGB", (img.width + front.width, max(img.height, front.height)), "white")
        both.paste(img, (0, 0))
        both.paste(front, (img.width, 0))
        img = both
    path = Path(path)
    with os_errors_name(path), atomic_open(path) as f:
        img.save(f, format="PNG")
    return path


def front_of(points: list[tuple[str, float, float, float]]) -> list[str]:
    """The label kinds no other kind beats: none costs at most their bytes per view with a higher mean."""
    return [n for n, b, m, _ in points if not any(b2 <= b and m2 > m for n2, b2, m2, _ in points if n2 != n)]


def plot_front(points: list[tuple[str, float, float, float]], onehot: float | None, title: str,
               width: int = 520, height: int = 360) -> Image.Image:
    """Top-1 (fraction) against bytes per view (log x): ``points`` are (name, bytes per view, mean, std)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 50, 20, 40, 50
    xs = [b for _, b, _, _ in points]
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)) + 1e-9)
    hi = max(hi, lo + 1)
    ys = [m - s for _, _, m, s in points] + [m + s for _, _, m, s in points] + ([onehot] if onehot else [])
    y_lo, y_hi = math.floor(min(ys) * 20) / 20, math.ceil(max(ys) * 20) / 20
    y_hi = max(y_hi, y_lo + 0.05)

    def x_of(v: float) -> int:
        return left + round((math.log10(v) - lo) / (hi - lo) * (width - left - right))

    def y_of(v: float) -> int:
        return round(height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    d.text((10, 10), title, fill="black", font=font)
    for e in range(lo, hi + 1):
        d.line((x_of(10 ** e), top, x_of(10 ** e), height - bottom), fill=(225, 225, 225))
        d.text((x_of(10 ** e) - 10, height - bottom + 6), f"{10 ** e:g}", fill="black", font=font)
    d.text((width // 2 - 60, height - 20), "label bytes per view (log)", fill="black", font=font)
    steps = max(1, round((y_hi - y_lo) / 0.05))
    for t in range(steps + 1):
        v = y_lo + t * (y_hi - y_lo) / steps
        d.line((left, y_of(v), width - right, y_of(v)), fill=(235, 235, 235))
        d.text((8, y_of(v) - 6), f"{v * 100:.0f}", fill="black", font=font)
    if onehot is not None:
        for x in range(left, width - right, 12):
            d.line((x, y_of(onehot), x + 6, y_of(onehot)), fill=(150, 150, 150))
        d.text((width - right - 60, y_of(onehot) - 14), "one-hot", fill=(110, 110, 110), font=font)
    on_front = set(front_of(points))
    front = sorted((b, m) for n, b, m, _ in points if n in on_front)
    for (b1, m1), (b2, m2) in itertools.pairwise(front):
        d.line((x_of(b1), y_of(m1), x_of(b2), y_of(m2)), fill=(52, 101, 164), width=2)
    for name, b, m, s in points:
        x = x_of(b)
        d.line((x, y_of(m - s), x, y_of(m + s)), fill="black", width=1)
        d.line((x - 3, y_of(m - s), x + 3, y_of(m - s)), fill="black")
        d.line((x - 3, y_of(m + s), x + 3, y_of(m + s)), fill="black")
        colour = (52, 101, 164) if name in on_front else (204, 121, 38)
        d.ellipse((x - 4, y_of(m) - 4, x + 4, y_of(m) + 4), fill=colour)
        d.text((x + 6, y_of(m) - 12), f"{name} {m * 100:.1f}", fill="black", font=font)
    return img


def _bars(result: dict[str, Any]) -> Image.Image:
    """Bars of top-1 (mean) with error bars (std) per label kind and image set."""
    kinds = result["labels"]
    sets = list(result["table"])
    colours = {"store": (52, 101, 164), "random": (204, 121, 38)}
    width, height, left, bottom, top = 160 + 150 * len(kinds), 360, 60, 50, 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 10), f"student top-1 (%), IPC {result['ipc']}, {result['seeds']} seed(s)", fill="black", font=font)
    plot_h = height - bottom - top

    def y_of(v: float) -> int:
        return int(height - bottom - v * plot_h)

    for tick in range(0, 101, 20):
        y = y_of(tick / 100)
        d.line((left - 4, y, width - 20, y), fill=(225, 225, 225))
        d.text((left - 30, y - 6), f"{tick}", fill="black", font=font)
    group_w = (width - left - 30) // max(1, len(kinds))
    bar_w = max(8, group_w // (len(sets) + 1))
    for g, kind in enumerate(kinds):
        x0 = left + g * group_w + bar_w // 2
        for j, images in enumerate(sets):
            cell = result["table"][images].get(kind)
            if cell is None:
                continue
            x = x0 + j * bar_w
            d.rectangle((x, y_of(cell["mean"]), x + bar_w - 4, y_of(0)), fill=colours.get(images, (120, 120, 120)))
            cx = x + (bar_w - 4) // 2
            lo, hi = y_of(cell["mean"] - cell["std"]), y_of(cell["mean"] + cell["std"])
            d.line((cx, lo, cx, hi), fill="black", width=2)
            d.line((cx - 4, lo, cx + 4, lo), fill="black")
            d.line((cx - 4, hi, cx + 4, hi), fill="black")
            d.text((x, y_of(cell["mean"]) - 14), f"{cell['mean'] * 100:.1f}", fill="black", font=font)
        d.text((x0, height - bottom + 8), kind, fill="black", font=font)
    for j, images in enumerate(sets):
        d.rectangle((left + 200 * j, height - 22, left + 200 * j + 10, height - 12), fill=colours.get(images, (120, 120, 120)))
        d.text((left + 200 * j + 16, height - 24), {"store": "distilled store", "random": "random real"}.get(images, images),
               fill="black", font=font)
    return img
