"""Sample keys.

Why so strict: webdataset splits a member name at the first dot to get (key, extension), and a path
separator would let a key escape its shard or folder on export. Store keys are therefore limited to
``[A-Za-z0-9_-]``, which also sorts the same way everywhere.
"""

from __future__ import annotations

import re

from nrrstore.errors import NrrError

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def check_key(key: str, where: str | None = None) -> str:
    """Return ``key`` if it is a valid store key, else raise `NrrError` saying why."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        if isinstance(key, str) and "." in key:
            why = "contains a dot (webdataset splits keys at the first dot)"
        elif isinstance(key, str) and ("/" in key or "\\" in key):
            why = "contains a path separator"
        elif not key:
            why = "is empty"
        else:
            why = "may only contain letters, digits, '_' and '-' (at most 200)"
        raise NrrError(where, f"invalid key {key!r}: {why}")
    return key


def image_key(cls: int, index: int) -> str:
    """The key nrrstore gives the ``index``-th synthetic image of class ``cls``."""
    return f"c{cls:05d}_{index:06d}"
