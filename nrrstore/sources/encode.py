"""One sample of `prepare`: a file read and decoded, its colour mode and size made uniform, its bytes encoded.

Kept apart from the writer and free of state, so that worker processes (`nrrstore.sources.workers`) run exactly
the code one process runs: the bytes cannot differ with the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nrrstore.errors import NrrError
from nrrstore.format.images import decode_image, encode_image, probe_image
from nrrstore.sources.imagefolder import read_file_bytes

MODES = ("keep", "L", "RGB")
#: "source" keeps each input file's bytes as they are (no second lossy encode of a JPEG, no PNG blow-up).
IMAGE_FORMATS = ("png", "webp", "jpg", "source")


@dataclass(frozen=True)
class SourceImage:
    """An input file's decoded pixels with its original bytes, for ``image_format="source"``."""

    pixels: np.ndarray
    data: bytes


@dataclass(frozen=True)
class Failure:
    """An `NrrError` raised in a worker, carried back as data: the exception itself does not unpickle (its
    ``__init__`` takes the path and the problem, its ``args`` hold the joined message)."""

    kind: type[NrrError]
    path: str | None
    problem: str

    @classmethod
    def of(cls, exc: NrrError) -> Failure:
        return cls(type(exc), exc.path, exc.problem)

    def error(self) -> NrrError:
        return self.kind(self.path, self.problem)


@dataclass(frozen=True)
class Encoded:
    """A sample a worker already encoded: ``(ext, data)``, or the `Failure` its encoding raised, which
    :meth:`stored` raises where one process would have raised it (at the sample's turn in the writer)."""

    ext: str = ""
    data: bytes = b""
    failure: Failure | None = None

    def stored(self) -> tuple[str, bytes]:
        if self.failure is not None:
            raise self.failure.error()
        return self.ext, self.data


def read_sample_file(path: Path, image_format: str, max_pixels: int) -> np.ndarray | SourceImage:
    """An image file's pixels (with its bytes for ``--format source``); an unreadable or corrupt file names itself."""
    data = read_file_bytes(path)
    image = decode_image(data, where=os.fspath(path), max_pixels=max_pixels)
    return SourceImage(image, data) if image_format == "source" else image


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to ``size`` and cut the centre ``size x size`` (torchvision's Resize + CenterCrop)."""
    img = Image.fromarray(image)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = round((nw - size) / 2), round((nh - size) / 2)
    return np.asarray(img.crop((left, top, left + size, top + size)))


def convert_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """``keep`` the image as is, or make it grey (``L``, ITU-R 601 luma as Pillow) or ``RGB``."""
    if mode == "keep":
        return image
    if mode == "L":
        return image if image.ndim == 2 else np.asarray(Image.fromarray(image, "RGB").convert("L"))
    if mode == "RGB":
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    raise NrrError(None, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


def stored_bytes(pixels: np.ndarray, source: bytes | None, image_format: str, key: str) -> tuple[str, bytes]:
    """(extension, bytes) of one sample: an encode of ``pixels``, or with ``source`` the file as it is.

    Source bytes are kept only where every reader decodes them to the pixels nrrstore sees: a PNG, JPEG
    or WebP of 8-bit grey or RGB (`probe_image`); --mode and --resize are refused with ``source`` up front.
    """
    if image_format != "source":
        return image_format, encode_image(pixels, image_format)
    head = probe_image(source) if source is not None else None
    if head is None or source is None:
        raise NrrError(None, f"sample {key!r}: --format source keeps files as they are, but this one is not an 8-bit "
                             "grey or RGB PNG, JPEG or WebP; use png, jpg or webp")
    return head.ext, source


def encode_sample(item: np.ndarray | SourceImage, key: str, image_format: str, mode: str,
                  resize: int | None) -> tuple[str, bytes]:
    """(extension, bytes) a shard stores for one sample: ``mode``, then ``resize``, then the encode.

    With ``source``, --mode and --resize make a pass-through: a file they leave unchanged (already RGB,
    already ``resize`` square) keeps its bytes; one they change is encoded once, in its own format (a JPEG
    as JPEG), so a mixed grey/RGB folder of 224 px JPEGs costs one lossy encode only for its grey files."""
    source = item.data if isinstance(item, SourceImage) else None
    original = np.asarray(item.pixels if isinstance(item, SourceImage) else item)
    pixels = convert_mode(original, mode)
    if resize is not None and pixels.shape[:2] != (resize, resize):
        pixels = resize_square(pixels, resize)
    if source is not None and pixels is not original:
        head = probe_image(source)
        return stored_bytes(pixels, None, head.ext if head is not None else "png", key)
    return stored_bytes(pixels, source, image_format, key)
