"""ImageFolder trees: ``ROOT/<class>/<...>/<image>``, the layout torchvision's ImageFolder reads.

Class index = position of the class folder in name order; files come in torchvision's order (folders
sorted by path, files by name), so the same tree always gives the same samples in the same order. Files with an image extension must
decode (a broken JPEG is an error, not a silently smaller class); other files are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nrrstore.errors import NrrError, path_text
from nrrstore.format.images import MAX_PIXELS, decode_image
from nrrstore.progress import Progress

#: The extensions torchvision's ImageFolder accepts (case-insensitive).
IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FolderEntry:
    path: Path
    label: int


def list_imagefolder(root: str | os.PathLike[str]) -> tuple[list[str], list[FolderEntry]]:
    """Class names and every image file with its label, in deterministic order (no decoding)."""
    root = Path(root)
    if not root.exists():
        raise NrrError(root, "no such file or directory")
    if not root.is_dir():
        raise NrrError(root, "not a directory (expected ROOT/<class>/<image> folders)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise NrrError(root, "no class folders found (expected ROOT/<class>/<image>)")
    for name in classes:
        if path_text(name) != name:  # undecodable bytes: the name cannot become a class name (text)
            raise NrrError(root / name, "class folder name is not valid UTF-8 (shown with \\x escapes); class names "
                                        "are text: rename the folder")
    entries: list[FolderEntry] = []
    for label, name in enumerate(classes):
        found = _walk_images(root / name)
        if not found:
            raise NrrError(root / name, "no image files in this class folder")
        entries.extend(FolderEntry(p, label) for p in found)
    return classes, entries


def _walk_images(folder: Path) -> list[Path]:
    # Folders sorted by path string, files by name: the order torchvision's ImageFolder uses.
    walked: list[tuple[str, list[str]]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        walked.append((dirpath, filenames))
    out: list[Path] = []
    for dirpath, filenames in sorted(walked):
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_FILE_EXTS):
                out.append(Path(dirpath) / f)
    return out


def read_file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NrrError(path, f"cannot read: {exc.strerror or exc}") from None


def read_image_file(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_image(read_file_bytes(path), where=os.fspath(path), max_pixels=max_pixels)


def iter_imagefolder(
    root: str | os.PathLike[str],
    max_pixels: int = MAX_PIXELS,
    progress: Progress | None = None,
) -> Iterator[tuple[Path, np.ndarray, int]]:
    """Yield ``(path, image, label)`` for every image of the tree (uint8, HxW or HxWx3)."""
    _, entries = list_imagefolder(root)
    for i, entry in enumerate(entries):
        yield entry.path, read_image_file(entry.path, max_pixels), entry.label
        if progress is not None:
            progress("read images", i + 1, len(entries))
