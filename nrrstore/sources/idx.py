"""IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.

Layout: two zero bytes, a type byte (0x08 = uint8 ...), the number of dimensions, then each
dimension as a big-endian uint32, then the data in C order. Every way a file can disagree with its
own header is reported, because a silently short array would shift every later label.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from nrrstore.errors import NrrError

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> io.BufferedIOBase:
    try:
        # entered by `with f:` below; opened apart so that only open's own errors get these messages
        f = open(path, "rb")  # noqa: SIM115 - see above
    except FileNotFoundError:
        raise NrrError(path, "no such file or directory") from None
    except IsADirectoryError:
        raise NrrError(path, "is a directory, not an IDX file") from None
    except OSError as exc:
        raise NrrError(path, f"cannot open: {exc.strerror or exc}") from None
    with f:
        gzipped = f.read(2) == _GZIP_MAGIC  # by content, not by file name
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_upto(f: io.BufferedIOBase, n: int, chunk: int = 1 << 24) -> bytes:
    # In chunks, so a forged header promising terabytes fails on the short read, not on allocation.
    parts: list[bytes] = []
    left = n
    while left > 0:
        block = f.read(min(chunk, left))
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def read_idx(path: str | os.PathLike[str], expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file into a native-endian numpy array of the dtype its header names."""
    path = Path(path)
    f = _open(path)
    try:
        header = f.read(4)
        if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in _DTYPES:
            raise NrrError(path, f"not an IDX file (bad magic {header.hex() or 'empty'})")
        dtype, ndim = np.dtype(_DTYPES[header[2]]), header[3]
        if expect_ndim is not None and ndim != expect_ndim:
            kind = {1: "labels (magic 0x0801)", 3: "images (magic 0x0803)"}.get(expect_ndim, f"{expect_ndim}-d")
            raise NrrError(path, f"expected IDX {kind}, found a {ndim}-d file (magic 0x{header[2]:02x}{ndim:02x})")
        raw_dims = f.read(4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise NrrError(path, "truncated IDX header")
        dims = struct.unpack(f">{ndim}I", raw_dims)
        need = math.prod(dims) * dtype.itemsize  # Python ints: a forged header cannot overflow
        data = _read_upto(f, need)
        if len(data) < need:
            raise NrrError(path, f"truncated: the header {list(dims)} promises {need} data bytes, found {len(data)}")
        if f.read(1):
            raise NrrError(path, f"unexpected bytes after the {need} data bytes that the header {list(dims)} promises")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise NrrError(path, f"corrupt or truncated gzip ({exc or type(exc).__name__})") from None
    finally:
        f.close()
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """``N x H x W`` uint8 images (magic 0x0803)."""
    images = read_idx(path, expect_ndim=3)
    if images.dtype != np.uint8:
        raise NrrError(path, f"images must be unsigned bytes (type 0x08), found {images.dtype}")
    return images


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """``N`` integer labels (magic 0x0801) as int64."""
    labels = read_idx(path, expect_ndim=1)
    if labels.dtype.kind not in "iu":
        raise NrrError(path, f"labels must be integers, found {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise NrrError(path, f"negative label {int(labels.min())}")
    return labels.astype(np.int64)


def read_idx_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels that belong together; their counts must agree."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise NrrError(labels_path, f"has {len(labels)} labels but {os.fspath(images_path)} has {len(images)} images")
    return images, labels
