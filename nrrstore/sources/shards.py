"""Reading labelled WebDataset shards: where they are (`resolve_shards`) and what they hold (`iter_samples`).

Why not `webdataset.WebDataset` itself: its directory mode blocks forever, it skips damaged samples
or shards silently depending on handlers, and its errors do not say which file is at fault. Here a
shard spec is resolved up front (so a typo fails before any work starts) and every problem in a
shard is an `NrrError` naming the shard and the sample key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from braceexpand import UnbalancedBracesError, braceexpand  # type: ignore[attr-defined]  # absent from braceexpand's own stub

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.images import IMAGE_EXTS, MAX_PIXELS, decode_image
from nrrstore.format.tario import iter_tar_samples
from nrrstore.progress import Progress

#: File name endings taken as shards when a directory is given.
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class Sample:
    """One labelled image read from a shard."""

    key: str
    image: np.ndarray  # uint8, HxW (grey) or HxWx3 (RGB); None only from iter_samples(..., decode=False)
    label: int
    shard: str
    meta: dict[str, Any] = field(default_factory=dict)  # the sample's .json member, if any
    data: bytes | None = None  # the image member's bytes as stored (for pass-through)


def is_remote(url: str) -> bool:
    """True for `pipe:` commands and URLs with a scheme other than ``file://``."""
    return url.startswith("pipe:") or fs.is_url(url)


def _local_path(spec: str) -> Path:
    loc = fs.location(spec)
    assert isinstance(loc, Path)
    return loc.expanduser()


def _is_shard_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SHARD_SUFFIXES)


def _expand(pattern: str, where: str) -> list[str]:
    try:
        return list(braceexpand(pattern))
    except UnbalancedBracesError:
        raise NrrError(where, "unbalanced braces in shard pattern") from None


def _resolve_one(spec: str, base: fs.Location | None, from_list: fs.Location | None) -> list[str]:
    if spec.startswith("pipe:"):
        return _expand(spec, spec)
    if fs.is_url(spec):
        return _resolve_remote(fs.location(spec), spec, from_list)
    if isinstance(base, fs.Url) and not spec.startswith("/"):
        return _resolve_remote(base / spec, spec, from_list)
    path = _local_path(spec)
    if base is not None and not path.is_absolute():
        path = base / path
    if "{" in spec and not path.exists():
        expanded = [Path(p) for p in _expand(os.fspath(path), spec)]
        if len(expanded) > 1 or expanded[0] != path:
            for p in expanded:
                if not p.is_file():
                    raise NrrError(p, f"no such file or directory (from the pattern {spec!r})")
            return [os.fspath(p) for p in expanded]
    if not path.exists():
        where = f" (listed in {from_list})" if from_list is not None else ""
        raise NrrError(path, f"no such file or directory{where}")
    if path.is_dir():
        shards = sorted(p.name for p in path.iterdir() if _is_shard_name(p.name) and p.is_file())
        if not shards:
            raise NrrError(path, "no .tar shards found (looked for *.tar, *.tar.gz, *.tgz)")
        return [os.fspath(path / name) for name in shards]
    if path.suffix.lower() == ".txt":
        if from_list is not None:
            raise NrrError(path, f"a shard list may not name another list (listed in {from_list})")
        return _read_list(path)
    return [os.fspath(path)]


def _resolve_remote(url: fs.Location, spec: str, from_list: fs.Location | None) -> list[str]:
    """A URL: a brace pattern, a list, a shard, or (object stores) a prefix holding shards.

    Every shard is checked to exist here (object stores: one listing per folder; http: one HEAD per
    shard), so a typo fails before any work starts. http servers cannot list folders: name the shards.
    """
    assert isinstance(url, fs.Url)
    listed = f" (listed in {from_list})" if from_list is not None else ""
    if "{" in url:
        urls = [fs.Url(u) for u in _expand(url, spec)]
        _check_exist(urls, f" (from the pattern {spec!r})")
        return [str(u) for u in urls]
    if url.lower().endswith(".txt"):
        if from_list is not None:
            raise NrrError(url, f"a shard list may not name another list (listed in {from_list})")
        return _read_list(url)
    if _is_shard_name(url.name) or not fs.can_list(url):
        _check_exist([url], listed)
        return [str(url)]
    try:
        names = [name for name, is_file in fs.list_dir(url) if is_file and _is_shard_name(name)]
    except fs.NotFound as exc:
        raise NrrError(url, f"{exc.problem}{listed}") from None
    if not names:
        raise NrrError(url, "no .tar shards found (looked for *.tar, *.tar.gz, *.tgz)")
    return [str(url / name) for name in names]


def _check_exist(urls: list[fs.Url], where: str) -> None:
    folders: dict[str, set[str]] = {}
    for url in urls:
        if fs.can_list(url):
            parent = url.parent
            if parent not in folders:
                try:
                    folders[parent] = {name for name, is_file in fs.list_dir(parent) if is_file}
                except fs.NotFound as exc:
                    raise NrrError(url if "bucket" not in exc.problem else parent, f"{exc.problem}{where}") from None
            found = url.name in folders[parent]
        else:
            found = fs.is_file(url)
        if not found:
            raise NrrError(url, f"no such file or object{where}")


def _read_list(path: fs.Location) -> list[str]:
    try:
        lines = fs.read_bytes(path).decode("utf-8").splitlines()
    except fs.NotFound:
        raise NrrError(path, "no such file or object") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NrrError(path, f"cannot read shard list: {exc}") from None
    out: list[str] = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out.extend(_resolve_one(entry, path.parent, path))
    if not out:
        raise NrrError(path, "the shard list names no shards")
    return out


def resolve_shards(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Turn a shard spec into the ordered list of shard paths or URLs it means.

    Accepted: a directory (its ``*.tar``/``*.tar.gz``/``*.tgz`` files, sorted by name), a brace
    pattern (``train-{000000..000009}.tar``), a ``.txt`` file listing one shard per line (relative
    entries resolved against the list's folder, ``#`` comments), a single shard file, ``pipe:``
    commands (braces expanded), each of these as an ``s3://``, ``gs://`` or ``http(s)://`` URL (http
    cannot list folders), or a list of any of these. Files are checked to exist here, so a typo fails
    before any work starts; a URL scheme nrrstore cannot read is refused.
    """
    if isinstance(spec, (str, os.PathLike)):
        specs = [os.fspath(spec)]
    else:
        specs = [os.fspath(s) for s in spec]
        if not specs:
            raise NrrError(None, "no shards given (empty list)")
    out: list[str] = []
    for s in specs:
        if not s.strip():
            raise NrrError(None, "empty shard path")
        out.extend(_resolve_one(s, None, None))
    return out


def open_shard(url: str) -> IO[bytes]:
    """Open a shard for streaming: files and URLs through :mod:`nrrstore.format.fs`, ``pipe:`` through
    webdataset's gopen."""
    if not url.startswith("pipe:"):
        loc = fs.location(url)
        try:
            return fs.open_read(loc.expanduser() if isinstance(loc, Path) else loc)
        except FileNotFoundError:
            raise NrrError(url, "no such file or directory") from None
        except OSError as exc:
            raise NrrError(url, f"cannot open: {exc.strerror or exc}") from None
    from webdataset.gopen import gopen

    try:
        return gopen(url, "rb")
    except (OSError, ValueError) as exc:
        raise NrrError(url, f"cannot open: {exc}") from None


def _parse_label(members: dict[str, bytes], shard: str, key: str) -> tuple[int, dict[str, Any]]:
    """The sample's label, parsed strictly: ``.cls`` integer text and the ``.json`` member's ``label``/``cls``
    integers; where several are present they must agree (a silent pick would train on a wrong label)."""
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            parsed = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NrrError(shard, f"sample {key!r}: {key}.json is not valid JSON ({exc})") from None
        if isinstance(parsed, dict):
            meta = parsed
    found: list[tuple[str, int]] = []
    if "cls" in members:
        text = members["cls"].decode("utf-8", errors="replace").strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits, as JSON's integers: int() also takes "３"
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise NrrError(shard, f"sample {key!r}: label {shown!r} in {key}.cls is not an integer")
        found.append((f"{key}.cls", int(text)))
    for name in ("label", "cls"):
        if name in meta:
            value = meta[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise NrrError(shard, f"sample {key!r}: {name!r} in {key}.json is not an integer: {value!r}")
            found.append((f"{name!r} in {key}.json", value))
    if found:
        if any(value != found[0][1] for _, value in found[1:]):
            listed = ", ".join(f"{value} ({where})" for where, value in found)
            raise NrrError(shard, f"sample {key!r}: its labels disagree: {listed}")
        return found[0][1], meta
    raise NrrError(shard, f"sample {key!r} has no label (expected {key}.cls, or {key}.json with 'label' or 'cls')")


def _image_member(members: dict[str, bytes], shard: str, key: str) -> str:
    found = [ext for ext in IMAGE_EXTS if ext in members]
    if not found:
        have = ", ".join(sorted(members)) or "nothing"
        raise NrrError(shard, f"sample {key!r} has no image member (.{', .'.join(IMAGE_EXTS)}); it has {have}")
    if len(found) > 1:
        raise NrrError(shard, f"sample {key!r} has several images ({', '.join(found)}); expected one")
    return found[0]


def iter_samples(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: Progress | None = None,
    want: Callable[[int], bool] | None = None,
    want_key: Callable[[int, str], bool] | None = None,
    decode: bool = True,
) -> Iterator[Sample]:
    """Yield every labelled image of the shards in order, decoded to uint8 arrays.

    ``want(label)`` False skips a sample before its image is decoded (distill reads only the classes
    it still needs; decoding is most of the cost of reading); ``want_key(label, key)`` does the same
    per sample (distill's seeded choice of source images).

    The label comes from ``<key>.cls`` (integer text) or ``<key>.json`` (``{"label": n}`` or
    ``{"cls": n}``); with ``num_classes`` (or ``class_names``) given it must lie in
    ``[0, num_classes)``. Any damage raises `NrrError` naming the shard and key.
    """
    shards = resolve_shards(spec)
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    wanted: Callable[[int, str], bool] | None = want_key  # both filters as one, of (label, key)
    if want is not None:
        by_label, by_key = want, want_key
        if by_key is None:
            wanted = lambda label, key: by_label(label)
        else:
            wanted = lambda label, key: by_label(label) and by_key(label, key)
    for i, shard in enumerate(shards):
        if shard.startswith("pipe:"):
            yield from _remote_samples(shard, num_classes, max_pixels, wanted, decode)
        else:
            yield from _samples_of(iter_tar_samples(shard), shard, num_classes, max_pixels, wanted, decode)
        if progress is not None:
            progress("read shards", i + 1, len(shards))


def _remote_samples(shard: str, num_classes: int | None, max_pixels: int,
                    want: Callable[[int, str], bool] | None = None, decode: bool = True) -> Iterator[Sample]:
    # A pipe reports its command's failure as OSError on read or on close; say so once, naming the shard.
    stream = open_shard(shard)
    done = False
    try:
        yield from _samples_of(iter_tar_samples(stream, where=shard), shard, num_classes, max_pixels, want, decode)
        done = True
    except NrrError:
        # An empty or cut stream is most often a failed command: report its exit status instead.
        status = _exit_status(stream)
        if status not in (None, 0, 141):
            raise NrrError(shard, f"read failed: command exited with status {status}") from None
        raise
    except OSError as exc:
        raise NrrError(shard, f"read failed: {_pipe_failure(stream, exc)}") from None
    finally:
        try:
            stream.close()
        except OSError as exc:
            if done:  # otherwise an error (or an early stop by the caller) is already on its way
                raise NrrError(shard, f"read failed: {_pipe_failure(stream, exc)}") from None


def _exit_status(stream: IO[bytes]) -> int | None:
    proc = getattr(stream, "proc", None)
    if proc is None:
        return None
    try:
        return proc.wait(timeout=2)
    except Exception:  # noqa: BLE001 - still running: no status to report
        return None


def _pipe_failure(stream: IO[bytes], exc: OSError) -> str:
    status = getattr(stream, "status", None)
    return f"command exited with status {status}" if status else str(exc)


def _samples_of(
    pairs: Iterator[tuple[str, dict[str, bytes]]], shard: str, num_classes: int | None, max_pixels: int,
    want: Callable[[int, str], bool] | None = None, decode: bool = True,
) -> Iterator[Sample]:
    for key, members in pairs:
        ext = _image_member(members, shard, key)
        label, meta = _parse_label(members, shard, key)
        if num_classes is not None and not 0 <= label < num_classes:
            raise NrrError(shard, f"sample {key!r}: label {label} outside the class range [0, {num_classes})")
        if want is not None and not want(label, key):
            continue
        image = decode_image(members[ext], where=f"{shard}: {key}.{ext}", max_pixels=max_pixels) if decode else None
        # image is None only under decode=False, whose callers read labels and keys alone (see Sample.image)
        yield Sample(key=key, image=image, label=label, shard=shard, meta=meta, data=members[ext])  # type: ignore[arg-type]  # see above


def iter_labels(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                num_classes: int | None = None) -> Iterator[tuple[str, int]]:
    """Yield ``(key, label)`` of every sample without decoding a single image (a cheap first pass)."""
    for s in iter_samples(spec, num_classes=num_classes, decode=False):
        yield s.key, s.label


def load_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Read class names from a ``.json`` file (a list or ``{"classes": [...]}``) or a text file (one per line)."""
    path = fs.location(path)
    try:
        text = fs.read_bytes(path).decode("utf-8")
    except (FileNotFoundError, fs.NotFound):
        raise NrrError(path, "no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NrrError(path, f"cannot read class names: {exc}") from None
    if str(path).lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NrrError(path, f"not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("classes")
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise NrrError(path, 'expected a list of class names or {"classes": [...]}')
        names = list(data)
    else:
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()
    return check_class_names(names, path)


def check_class_names(names: Sequence[str], where: str | os.PathLike[str] | None = None) -> list[str]:
    """Class names must be non-empty, single-line and unique; returns them as a list."""
    names = [n.strip() for n in names]
    if not names:
        raise NrrError(where, "no class names")
    for i, name in enumerate(names):
        if not name:
            raise NrrError(where, f"class {i} has an empty name")
        if "\n" in name or "\r" in name:
            raise NrrError(where, f"class {i} name contains a line break")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise NrrError(where, f"class name {name!r} appears twice (classes {seen[name]} and {i})")
        seen[name] = i
    return names


def read_class_names(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str] | None:
    """Class names from ``classes.txt`` or ``classes.json`` beside the first shard that is a file or a
    URL (not a ``pipe:`` command), else None."""
    for shard in resolve_shards(spec):
        if shard.startswith("pipe:"):
            continue
        loc = fs.location(shard)
        folder = loc.expanduser().parent if isinstance(loc, Path) else loc.parent
        for name in ("classes.txt", "classes.json"):
            candidate = folder / name
            if fs.is_file(candidate):
                return load_class_names(candidate)
        return None
    return None
