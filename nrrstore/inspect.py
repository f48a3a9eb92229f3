"""`inspect`: what is in a store or a folder of shards, and a contact sheet to look at it."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nrrstore.errors import NrrError
from nrrstore.format.manifest import MANIFEST_NAME
from nrrstore.format.reader import Store

Progress = Callable[[str, int, "int | None"], None]


def is_store(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_NAME).is_file()


def inspect_path(path: str | os.PathLike[str], grid: str | os.PathLike[str] | None = None,
                 per_class: int = 10, progress: Progress | None = None) -> dict[str, Any]:
    """Summarize a store (from its manifest) or WebDataset shards (by reading them once)."""
    if is_store(path):
        store = Store(path)
        info = store.info()
        if grid is not None:
            info["grid"] = str(grid)
            save_contact_sheet(_store_samples(store), store.classes, grid, per_class, cams=_store_cams(store))
        return info
    return _inspect_shards(path, grid, per_class, progress)


def _store_samples(store: Store) -> Iterator[tuple[int, np.ndarray, int]]:
    for img in store.iter_images():
        yield img.label, img.pixels, img.index


def _store_cams(store: Store) -> Any:
    """The store's CAM masks (zarr, [N,H,W] uint8) when it keeps them, else None."""
    cams = (store.manifest.labels or {}).get("cams")
    if not cams:
        return None
    import zarr

    return zarr.open_array(str(store.path / cams["path"]), mode="r")


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
        save_contact_sheet(iter(keep), class_names, grid, per_class)
        info["grid"] = str(grid)
    return info


def save_contact_sheet(samples: Iterable[tuple[int, np.ndarray, int]], classes: list[str],
                       out: str | os.PathLike[str], per_class: int = 10, cams: Any = None,
                       cell: int = 64) -> Path:
    """A PNG with one row per class: ``per_class`` images, each beside its CAM when ``cams`` is given."""
    rows: dict[int, list[tuple[np.ndarray, int]]] = {c: [] for c in range(len(classes))}
    for label, pixels, index in samples:
        if label in rows and len(rows[label]) < per_class:
            rows[label].append((pixels, index))
        if all(len(v) >= per_class for v in rows.values()):
            break
    font = ImageFont.load_default()
    label_w = 8 + max(int(font.getlength(n)) for n in classes) if classes else 8
    shown = max((len(v) for v in rows.values()), default=1) or 1
    cols = shown * (2 if cams is not None else 1)
    sheet = Image.new("RGB", (label_w + cols * (cell + 2), len(classes) * (cell + 2) + 2), "white")
    draw = ImageDraw.Draw(sheet)
    for r, c in enumerate(range(len(classes))):
        y = 2 + r * (cell + 2)
        draw.text((4, y + cell // 2 - 6), classes[c], fill="black", font=font)
        for k, (pixels, index) in enumerate(rows[c]):
            tiles = [_tile(pixels, cell)]
            if cams is not None:
                tiles.append(_cam_tile(pixels, np.asarray(cams[index]), cell))
            for t, tile in enumerate(tiles):
                sheet.paste(tile, (label_w + (k * len(tiles) + t) * (cell + 2), y))
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise NrrError(out, "folder for the contact sheet does not exist")
    sheet.save(out, format="PNG")
    return out


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
