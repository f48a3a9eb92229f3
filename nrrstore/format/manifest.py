"""The store manifest: what a store holds, how it was made, and the checksum of every file.

The manifest is written last, so its presence marks a complete store. Its ``format_version`` is
``MAJOR.MINOR``: a reader accepts any minor version of its own major (minor versions only add optional
fields) and refuses other majors with a message naming both versions.

Since 1.1 the manifest ends with ``manifest_sha256``, the sha256 of its own canonical JSON without
that field. The file checksums cover the data files, and this digest covers the manifest's own values
(augmentation seed, teacher checksum, eps...): an edit that makes the stored labels describe other
views is refused by every reader and reported by `verify`. It detects edits, not forgery: whoever edits
the values can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nrrstore import __version__
from nrrstore.errors import FormatVersionError, NrrError, os_problem
from nrrstore.format import fs
from nrrstore.format.layout import INDEX_NAME, MANIFEST_NAME

FORMAT_NAME = "nrrstore"
FORMAT_VERSION = "1.2"
DIGEST_KEY = "manifest_sha256"


@dataclass
class ImageInfo:
    height: int
    width: int
    channels: int
    encoding: str  # png | jpg | webp
    quality: int | None = None

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


@dataclass
class FileEntry:
    path: str  # relative to the store root, "/"-separated
    bytes: int
    sha256: str
    kind: str


@dataclass
class Manifest:
    classes: list[str]
    image: ImageInfo
    num_images: int
    per_class: list[int]
    shards: list[str]
    shard_size: int
    files: list[FileEntry] = field(default_factory=list)
    normalization: dict[str, list[float]] | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    augmentation: dict[str, Any] | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    tool_version: str = __version__
    created: str = ""
    format_version: str = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def index_sha256(self) -> str | None:
        """The checksum of the key index: it pins the images' order, which jobs that resume check."""
        entry = self.file(INDEX_NAME)
        return entry.sha256 if entry is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; key order is fixed so equal manifests serialize to equal bytes."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,  # written in the current version, whatever was read
            "tool": {"name": "nrrstore", "version": self.tool_version},
            "created": self.created,
            "dataset": {
                "num_classes": self.num_classes,
                "classes": [{"index": i, "name": n} for i, n in enumerate(self.classes)],
                "num_images": self.num_images,
                "per_class": list(self.per_class),
                "image": {
                    "height": self.image.height, "width": self.image.width,
                    "channels": self.image.channels, "mode": self.image.mode,
                    "encoding": self.image.encoding, "quality": self.image.quality,
                },
                "normalization": self.normalization,
            },
            "images": {"index": INDEX_NAME, "shards": list(self.shards), "shard_size": self.shard_size},
            "labels": self.labels,
            "teacher": self.teacher,
            "method": self.method,
            "augmentation": self.augmentation,
            "source": self.source,
            "files": [asdict(f) for f in self.files],
        }

    def to_json(self) -> str:
        doc = self.to_dict()
        doc[DIGEST_KEY] = manifest_digest(doc)
        return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | None = None, check_digest: bool = True) -> Manifest:
        """Parse a manifest document; ``check_digest`` refuses one whose values were edited (1.1+)."""
        check_format(d, where)
        if check_digest:
            problem = digest_problem(d)
            if problem:
                raise NrrError(where, problem)
        newer = newer_sections(d)
        if newer:
            raise NrrError(where, f"manifest declares format {d.get('format_version')} but holds {', '.join(newer)} "
                                  "of a later version: it was edited to look older (a downgrade skips checks)")
        try:
            ds, im = d["dataset"], d["dataset"]["image"]
            classes = [c["name"] for c in sorted(ds["classes"], key=lambda c: c["index"])]
            m = cls(
                classes=classes,
                image=ImageInfo(int(im["height"]), int(im["width"]), int(im["channels"]), str(im["encoding"]), im.get("quality")),
                num_images=int(ds["num_images"]),
                per_class=[int(x) for x in ds["per_class"]],
                shards=list(d["images"]["shards"]),
                shard_size=int(d["images"]["shard_size"]),
                files=[FileEntry(str(f["path"]), int(f["bytes"]), str(f["sha256"]), str(f["kind"])) for f in d["files"]],
                normalization=ds.get("normalization"),
                teacher=d.get("teacher") or {},
                method=d.get("method") or {},
                augmentation=d.get("augmentation"),
                labels=d.get("labels") or {},
                source=d.get("source") or {},
                tool_version=str(d["tool"]["version"]),
                created=str(d.get("created", "")),
                format_version=str(d["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NrrError(where, f"malformed manifest: {type(exc).__name__}: {exc}") from None
        if len(m.per_class) != m.num_classes or sum(m.per_class) != m.num_images:
            raise NrrError(where, "malformed manifest: per-class counts do not add up to num_images")
        for path in (*(f.path for f in m.files), *m.shards, *_named_paths(d.get("labels"))):
            if not _inside_store(path):
                raise NrrError(where, f"malformed manifest: path {path!r} leaves the store (paths are relative, "
                                      "normalised and inside it)")
        return m


_SINCE = {"labels.codecs": (1, 2), "labels.codecs_prior": (1, 2), "manifest_sha256": (1, 1)}
"""Manifest keys and the format version that introduced them (FORMAT.md's version table)."""


def newer_sections(d: dict[str, Any]) -> list[str]:
    """The keys of ``d`` that its declared ``format_version`` predates (1.2's codecs in a "1.0" manifest...)."""
    try:
        declared = tuple(int(x) for x in str(d.get("format_version", "")).split(".")[:2])
    except ValueError:
        return []
    found = d.get("labels")
    labels: dict[str, Any] = found if isinstance(found, dict) else {}
    present = {"labels.codecs": "codecs" in labels, "labels.codecs_prior": "codecs_prior" in labels,
               "manifest_sha256": DIGEST_KEY in d}
    return [key for key, since in _SINCE.items() if present[key] and declared < since]


def _named_paths(section: Any) -> list[Any]:
    """Every ``"path"`` value in a manifest section, at any depth (distance files, soft labels, codec fields...)."""
    if isinstance(section, dict):
        return [v for k, v in section.items() if k == "path"] + \
               [p for k, v in section.items() if k != "path" for p in _named_paths(v)]
    if isinstance(section, list):
        return [p for v in section for p in _named_paths(v)]
    return []


def _inside_store(path: Any) -> bool:
    """A relative, normalised, ``/``-separated path with no ``..``: it cannot name a file outside the store."""
    return (isinstance(path, str) and path != "" and not path.startswith("/") and "\\" not in path
            and posixpath.normpath(path) == path and ".." not in path.split("/"))


def manifest_digest(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of ``doc`` without its digest."""
    body = {k: v for k, v in doc.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_problem(doc: dict[str, Any]) -> str | None:
    """Why the manifest's digest does not vouch for its values, or None (1.0 stores have none to check)."""
    version = str(doc.get("format_version", ""))
    stored = doc.get(DIGEST_KEY)
    if stored is None:
        if version in ("1.0", ""):
            return None
        return f"manifest of format {version} lacks its {DIGEST_KEY}; it was edited or cut"
    try:
        actual = manifest_digest(doc)
    except (TypeError, ValueError) as exc:
        return f"manifest values cannot be digested ({exc})"
    if stored != actual:
        return (f"manifest values were changed after the store was written ({DIGEST_KEY} does not match); "
                "the labels may describe other views: rewrite the store rather than edit its manifest")
    return None


def check_format(d: Any, where: str | None) -> None:
    """Refuse documents that are not nrrstore manifests or have another major version."""
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise NrrError(where, f"not an nrrstore manifest (no \"format\": \"{FORMAT_NAME}\")")
    version = str(d.get("format_version", ""))
    major = version.split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise FormatVersionError(
            where,
            f"store format version {version or '?'} is not supported by this nrrstore "
            f"(reads format {FORMAT_VERSION.split('.')[0]}.x, writes {FORMAT_VERSION}); "
            "use a matching nrrstore release",
        )


def load_manifest(store: str | os.PathLike[str], check_digest: bool = True) -> Manifest:
    """The manifest of ``store`` (a folder or a URL); ``check_digest=False`` reads an edited one (for
    `verify` to report)."""
    return Manifest.from_dict(read_manifest_doc(store), str(fs.location(store) / MANIFEST_NAME), check_digest)


def read_manifest_doc(store: str | os.PathLike[str]) -> Any:
    """The parsed JSON of ``store``'s manifest; a missing one says whether the store is absent or unfinished.

    On an object store the manifest is the commit point, written after every other object: a prefix
    with objects and no manifest is an unfinished remote write (schemas/FORMAT.md).
    """
    root = fs.location(store)
    path = root / MANIFEST_NAME
    if isinstance(root, Path):
        if not root.exists():
            raise NrrError(store, "no such store")
        if not (root / MANIFEST_NAME).is_file():  # `path`, known local here
            raise NrrError(path, "missing manifest (not a store, or an incomplete one)")
    try:
        raw = fs.read_bytes(path)
    except fs.NotFound as exc:
        if "bucket" in exc.problem or not fs.can_list(root) or not fs.list_files(root):
            raise NrrError(root, exc.problem if "bucket" in exc.problem else "no such store") from None
        raise NrrError(path, "missing manifest: an unfinished remote write (its objects are there, the manifest "
                             "is written last); rerun the same command to resume it") from None
    except OSError as exc:
        raise NrrError(path, f"cannot read: {os_problem(exc)}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NrrError(path, f"manifest is not valid JSON ({exc})") from None


def creation_time() -> str:
    """UTC creation time; honours SOURCE_DATE_EPOCH so fully reproducible builds are possible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
