"""Where everything lives inside a store: the one place that knows the store's file names.

Every path is relative to the store root and ``/``-separated, as the manifest records it. Code
outside :mod:`nrrstore.format` asks these functions (or a `Store`) instead of spelling names.
"""

from __future__ import annotations

import os
from pathlib import Path

from nrrstore.format import fs

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.parquet"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
SOFTLABELS_PATH = f"{LABELS_DIR}/softlabels.zarr"
CODECS_DIR = f"{LABELS_DIR}/codecs"
LABEL_FILE_KINDS = ("distances", "softlabels", "codecs")
"""The manifest kinds of a store's label files: what a relabel replaces and what pins a reader's labels."""
CAMS_PATH = "cams.zarr"
RELABEL_WORK_DIR = ".relabel"
"""Inside the store: a relabel job's finished chunk files and resume state, until it installs them."""


def softlabels_path(version: str | None = None) -> str:
    """Where a relabel job with the ``version`` tag (see `label_version`) installs its soft labels; ``None``: the
    unversioned name that stores made before versioning and converted stores use."""
    return SOFTLABELS_PATH if version is None else f"{LABELS_DIR}/softlabels-{version}.zarr"


def codecs_dir(version: str | None = None) -> str:
    """The folder of a relabel job's codec arrays and class prior (as `softlabels_path`)."""
    return CODECS_DIR if version is None else f"{LABELS_DIR}/codecs-{version}"


def label_version(job: object) -> str:
    """A tag naming one version of a store's zarr labels: the digest of the job's arguments. Labels of another
    version go under other names, so a reader that opened the old manifest reads old files to the end or meets
    a missing one (and fails in one line); it never reads a mix. The same arguments give the same bytes and
    the same tag."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shard_path(number: int) -> str:
    """The ``number``-th image shard (store order)."""
    return f"{IMAGES_DIR}/shard-{number:06d}.tar"


DISTANCE_FILE_GLOB = "distances-*.parquet"


def distance_file_name(first_epoch: int, last_epoch: int) -> str:
    """The file name of the distance table holding epochs ``first_epoch..last_epoch``."""
    return f"distances-e{first_epoch:04d}-e{last_epoch:04d}.parquet"


def distance_path(first_epoch: int, last_epoch: int) -> str:
    return f"{LABELS_DIR}/{distance_file_name(first_epoch, last_epoch)}"


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a folder or URL) is a finished store: it holds a manifest, which is written last."""
    return fs.is_file(fs.location(path) / MANIFEST_NAME)


def names_a_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a store rather than shards (a URL naming shards, a pattern or a list is not one).

    An unfinished remote write (objects, no manifest yet) names a store too: opening it says so.
    """
    loc = fs.location(path)
    if isinstance(loc, Path):
        return loc.is_dir() and is_store(loc)
    if loc.lower().endswith((".tar", ".tar.gz", ".tgz", ".txt")) or "{" in loc:
        return False
    if is_store(loc):
        return True
    return fs.can_list(loc) and any(rel.startswith(f"{IMAGES_DIR}/shard-") for rel in fs.list_files(loc))
