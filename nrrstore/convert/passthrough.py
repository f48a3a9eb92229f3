"""Keeping converted images byte for byte: decide up front whether a source can be stored as it is.

Why: re-encoding SRe2L/RDED JPEGs as PNG cost half of a conversion and made the store 4x larger
than its source, and a re-encode is also a change of pixels nobody asked for. A store holds one
image format, so the whole source passes through only when every image is a PNG, JPEG or WebP of
one format with 8-bit grey or RGB pixels (and already in the asked ``mode``); otherwise every
image is decoded and re-encoded as PNG, as before, and the reason is reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nrrstore.errors import NrrError
from nrrstore.format.images import probe_image

HEADER_BYTES = 256 * 1024
"""Bytes read to probe a file's header (a JPEG's EXIF/ICC blocks come before its frame header)."""


def read_file(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of an image file (the first ``limit`` only, when given)."""
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except OSError as exc:
        raise NrrError(path, f"cannot read: {exc.strerror or exc}") from None


def file_headers(paths: Iterable[Path]) -> Iterable[tuple[str, bytes]]:
    """``(where, leading bytes)`` of files, for :func:`passthrough_format`."""
    for p in paths:
        yield os.fspath(p), read_file(p, HEADER_BYTES)


def passthrough_format(headers: Iterable[tuple[str, bytes]], mode: str) -> tuple[str | None, str]:
    """``(format, "")`` when every image can be stored as it is, else ``(None, why not)``.

    ``mode``: ``keep``, ``L`` or ``RGB`` (an image in another mode would need converting).
    """
    fmt = None
    for where, data in headers:
        head = probe_image(data, where)
        if head is None:
            return None, f"{where} is not an 8-bit grey or RGB PNG, JPEG or WebP"
        if mode != "keep" and head.mode != mode:
            return None, f"{where} is {head.mode} and --mode asks for {mode}"
        if fmt is None:
            fmt = head.ext
        elif head.ext != fmt:
            return None, f"the images mix {fmt} and {head.ext} ({where})"
    if fmt is None:
        return None, "no images"
    return fmt, ""
