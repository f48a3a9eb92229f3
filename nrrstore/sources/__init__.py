"""Readers of input data (WebDataset shards, IDX files, ImageFolder trees) and converters to shards."""

from __future__ import annotations

from nrrstore.sources.idx import read_idx, read_idx_images, read_idx_labels, read_idx_pair
from nrrstore.sources.imagefolder import iter_imagefolder, list_imagefolder
from nrrstore.sources.prepare import prepare_idx, prepare_imagefolder, write_shards
from nrrstore.sources.shards import (
    Sample,
    iter_samples,
    load_class_names,
    open_shard,
    read_class_names,
    resolve_shards,
)

__all__ = [
    "Sample",
    "iter_imagefolder",
    "iter_samples",
    "list_imagefolder",
    "load_class_names",
    "open_shard",
    "prepare_idx",
    "prepare_imagefolder",
    "read_class_names",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "resolve_shards",
    "write_shards",
]
