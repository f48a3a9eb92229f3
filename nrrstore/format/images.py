"""Image encoding and guarded decoding.

Encoding is deterministic (no metadata, fixed compressor settings) so stores are byte-reproducible.
Decoding refuses decompression bombs by checking the header's size *before* pixels are decoded,
because Pillow's own guard only warns below twice its limit.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from nrrstore.errors import NrrError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
#: Largest image nrrstore decodes (pixels). ImageNet's largest is ~ 40 Mpx; larger is a bomb or a mistake.
MAX_PIXELS = 64 * 1024 * 1024

_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_JPEG_QUALITY = 95
"""JPEG quality when none is given (4:4:4 chroma, no optimisation: stable bytes)."""


def effective_quality(fmt: str, quality: int | None) -> int | None:
    """The quality an encode with ``quality`` really uses (None: lossless), as manifests record it."""
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        return DEFAULT_JPEG_QUALITY if quality is None else int(quality)
    return None if fmt == "png" or quality is None else int(quality)


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int | None = None) -> bytes:
    """Encode an ``HxW`` (grey) or ``HxWx3`` uint8 array. Lossless PNG unless told otherwise."""
    if pixels.dtype != np.uint8:
        raise NrrError(None, f"images must be uint8 arrays, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise NrrError(None, f"images must be HxW or HxWx3, got shape {tuple(pixels.shape)}")
    fmt = fmt.lower()
    if fmt not in _PIL_FORMAT:
        raise NrrError(None, f"unknown image format {fmt!r}; use png, jpg or webp")
    img = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6, optimize=False)
    elif fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=effective_quality("jpg", quality), subsampling=0, optimize=False)
    else:
        lossless = quality is None
        img.save(buf, format="WEBP", lossless=lossless, quality=quality or 90, method=4, exact=True)
    return buf.getvalue()


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says: its store extension, size and PIL mode."""

    ext: str  # png | jpg | webp
    height: int
    width: int
    mode: str  # L | RGB

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def probe_image(data: bytes, where: str | None = None, max_pixels: int = MAX_PIXELS) -> ImageHeader | None:
    """The header of ``data`` if it can be stored as it is (pass-through), else None.

    As-is means: PNG, JPEG or WebP whose pixels are 8-bit grey or RGB, so that every reader decodes
    the bytes to exactly what :func:`decode_image` gives (palettes, alpha, 16 bits or CMYK would
    be converted, and other readers might convert them otherwise). Only the header is read; the
    pixels are decoded where they are used (and by ``nrrstore verify``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}.get(img.format or "")
            w, h, mode = img.size[0], img.size[1], img.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if w * h > max_pixels:
        raise NrrError(where, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (decompression bomb?)")
    if ext is None or mode not in ("L", "RGB") or (ext == "png" and "transparency" in img.info):
        return None
    return ImageHeader(ext, h, w, mode)


def decode_image(data: bytes, where: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a uint8 array (``HxW`` grey or ``HxWx3`` RGB).

    Palette, alpha and 16-bit images are converted to ``L`` or ``RGB``; anything else is refused.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise NrrError(where, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (decompression bomb?)")
            img.load()
    except NrrError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses very large headers before we see them
        raise NrrError(where, f"image over the pixel limit (decompression bomb?): {exc}") from None
    except UnidentifiedImageError as exc:
        raise NrrError(where, f"not a decodable image ({type(exc).__name__})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise NrrError(where, f"corrupt image: {exc}") from None
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA", "PA") else "L")
    return np.asarray(img, dtype=np.uint8)

