"""Keeping converted images byte for byte: whether a source can be stored as it is.

Why: re-encoding SRe2L/RDED JPEGs as PNG cost half of a conversion and made the store 4x larger
than its source, and a re-encode is also a change of pixels nobody asked for. A store holds one
image format, so the whole source passes through only when every image is a PNG, JPEG or WebP of
one format with 8-bit grey or RGB pixels (and already in the asked ``mode``); otherwise every
image is decoded and re-encoded as PNG, as before, and the reason is reported.

Converters decide on the fly (:class:`AsIs`): they write as-is until an image cannot be, and only
then start over with re-encoding, so the common case reads and probes every image once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from nrrstore.errors import NrrError
from nrrstore.format.images import ImageHeader, probe_image


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise NrrError(path, f"cannot read: {exc.strerror or exc}") from None


class NotAsIs(Exception):
    """An image that cannot be stored as it is; ``why`` says so in a few words."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class AsIs:
    """Checks images one by one for pass-through: the first one's format becomes the store's."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.format: str | None = None

    def check(self, data: bytes, where: str) -> ImageHeader:
        """The image's header, or `NotAsIs` (``mode``: keep, L or RGB; another mode needs converting)."""
        head = probe_image(data, where)
        if head is None:
            raise NotAsIs(f"{where} is not an 8-bit grey or RGB PNG, JPEG or WebP")
        if self.mode != "keep" and head.mode != self.mode:
            raise NotAsIs(f"{where} is {head.mode} and --mode asks for {self.mode}")
        if self.format is None:
            self.format = head.ext
        elif head.ext != self.format:
            raise NotAsIs(f"the images mix {self.format} and {head.ext} ({where})")
        return head


def passthrough_format(headers: Iterable[tuple[str, bytes]], mode: str) -> tuple[str | None, str]:
    """``(format, "")`` when every image can be stored as it is, else ``(None, why not)``."""
    check = AsIs(mode)
    try:
        for where, data in headers:
            check.check(data, where)
    except NotAsIs as exc:
        return None, exc.why
    return (check.format, "") if check.format else (None, "no images")
