"""The storage layer: store layout, manifest, shards, index, tables, verification (no torch models)."""

from nrrstore.format.manifest import FORMAT_VERSION, Manifest, load_manifest
from nrrstore.format.reader import Store, StoreImage
from nrrstore.format.update import update_store
from nrrstore.format.verify import verify_store
from nrrstore.format.writer import StoreWriter

__all__ = ["FORMAT_VERSION", "Manifest", "Store", "StoreImage", "StoreWriter", "load_manifest", "update_store", "verify_store"]
