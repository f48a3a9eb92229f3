"""The storage layer: the only code that knows the bytes on disk (no torch models).

`layout` names every file of a store; each component has one module that writes and reads it
(`manifest`, `tario` image shards, `index`, `distances`, `softlabels`, `cams`, over `parquet`
and `atomic` writes); `outputs` stages folder outputs, `lock` guards writers, `update` adds
components to a finished store, and `verify` checks one end to end. `fs` says where files live (a
local path, or an s3://, gs:// or http(s):// URL through fsspec) and is the one door for reading them
and for the file operations beyond atomic writing; `remote` writes outputs to object stores (staged
locally, uploaded with the manifest last).
"""

from nrrstore.format.manifest import FORMAT_VERSION, Manifest, load_manifest
from nrrstore.format.reader import Store, StoreImage
from nrrstore.format.update import update_store
from nrrstore.format.verify import verify_store
from nrrstore.format.writer import StoreWriter

__all__ = ["FORMAT_VERSION", "Manifest", "Store", "StoreImage", "StoreWriter", "load_manifest", "update_store", "verify_store"]
