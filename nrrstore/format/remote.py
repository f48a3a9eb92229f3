"""Writing to object stores (s3://, gs://): made in a local staging folder, uploaded with the marker last.

Object stores have no rename, so the local recipe (temporary name, then rename) cannot make a remote
output appear whole. Instead every remote write is made exactly as a local one (temporary names, the
lock, work folders and their resume) in a **staging folder keyed by the output URL**, and then
published: every object under the output's final prefix, the *marker* (``manifest.json`` of a store,
``shards.json`` of prepared shards) last, and objects the new output no longer lists removed after it.
A reader refuses a prefix without its marker, so a prefix is either a complete output or visibly
unfinished; a killed job rerun with the same arguments resumes from its staging folder (or, when the
local work was complete and only the upload was cut, just uploads again) and ends byte-identical to an
uninterrupted run. Jobs that change a store in place (``relabel``) first fetch it into the staging folder.

The staging folder is ``$NRRSTORE_STAGING/<sha256 of the URL>/`` (default ``~/.cache/nrrstore/staging``);
it is removed once the upload is complete. Locks (:mod:`nrrstore.format.lock`) live in it, so they keep
two processes of one machine from writing the same URL; object stores offer no lock across machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nrrstore.errors import NrrError, path_text
from nrrstore.format import fs
from nrrstore.format.atomic import fsync_dir, tmp_name

STAGING_ENV = "NRRSTORE_STAGING"
JOB_FILE = "job.json"
PROBE_PREFIX = ".nrrstore-probe-"
Job = Callable[[Path], dict[str, Any]]


def staging_root() -> Path:
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nrrstore" / "staging"


def stage_dir(url: fs.Url) -> Path:
    """The staging folder of an output URL (the same URL always gets the same folder)."""
    return staging_root() / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24]


def twin(url: fs.Url) -> Path:
    """Where the output is made locally before it is uploaded."""
    return stage_dir(url) / url.rstrip("/").rsplit("/", 1)[-1]


# -- checks at the door ---------------------------------------------------------------------------------
def check_remote_output(url: fs.Url, overwrite: bool, *, marker: str, kind: str,
                        ours: Callable[[str], bool]) -> None:
    """Before any work: the bucket exists and takes writes, and the prefix is absent, empty, an unfinished
    output of ``kind`` (objects ``ours`` accepts, no ``marker``: resumed or replaced), or a complete one
    with ``overwrite``."""
    files = {k: v for k, v in fs.list_files(url).items() if not k.startswith(PROBE_PREFIX)}
    if marker in files:
        if not overwrite:
            raise NrrError(url, "already exists (use --overwrite to replace it)")
    elif files and not all(ours(rel) for rel in files):
        other = next(rel for rel in files if not ours(rel))
        raise NrrError(url, f"refusing to write into a prefix that holds other objects ({other}) and is not {kind} "
                            f"(no {marker})")
    probe_write(url)


def probe_write(url: fs.Url) -> None:
    """Write and delete one empty object, so a bucket that refuses writes fails now, not after the work."""
    filesystem, _ = fs.filesystem(url)
    path = fs.object_path(url / f"{PROBE_PREFIX}{os.getpid()}")
    with fs.remote_errors(url):
        filesystem.pipe_file(path, b"")
        filesystem.rm_file(path)


# -- the job ---------------------------------------------------------------------------------------------
def run_remote(url: fs.Url, fingerprint: dict[str, Any], job: Job, *, marker: str, kind: str,
               ours: Callable[[str], bool], overwrite: bool = False, fetch: bool = False) -> dict[str, Any]:
    """Run ``job(local)`` in the staging folder of ``url`` and publish what it made there.

    ``fingerprint``: what must match for a staged result to be reused (the job's arguments). ``fetch``:
    the job changes an existing store in place, so it is fetched first (and must exist). Returns the
    job's summary (JSON-able; kept in the staging folder until the upload is complete).
    """
    local = twin(url)
    stage = local.parent
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if fetch:
        fs.filesystem(url)
        from nrrstore.format.manifest import load_manifest

        load_manifest(url)  # it must be a store (and a sound manifest) before anything is fetched
        probe_write(url)
    else:
        check_remote_output(url, overwrite, marker=marker, kind=kind, ours=ours)
    stage.mkdir(parents=True, exist_ok=True)
    state = _read_job(stage)
    if state.get("fingerprint") == fingerprint and state.get("done"):
        summary = state["summary"]  # the job had finished; only its upload was cut short
    else:
        if state.get("done") and local.exists():  # a finished result of other arguments
            shutil.rmtree(local)
        try:
            if fetch:
                fetch_store(url, local)
            _write_job(stage, {"url": str(url), "fingerprint": fingerprint, "done": False})
            summary = job(local)
        except BaseException as exc:
            _discard_if_idle(stage, local, fetch)
            if isinstance(exc, NrrError):
                raise _as_remote(exc, local, url) from None
            raise
        _write_job(stage, {"url": str(url), "fingerprint": fingerprint, "done": True, "summary": summary})
    publish(local, url, marker)
    shutil.rmtree(stage, ignore_errors=True)
    return summary


def _read_job(stage: Path) -> dict[str, Any]:
    try:
        return json.loads((stage / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_job(stage: Path, state: dict[str, Any]) -> None:
    from nrrstore.format.atomic import atomic_write_bytes

    atomic_write_bytes(stage / JOB_FILE, (json.dumps(state, indent=2, sort_keys=True, default=str) + "\n").encode())


def _discard_if_idle(stage: Path, local: Path, fetched: bool) -> None:
    """After a failure: keep the staging folder only when it holds work a rerun resumes."""
    work = [p for p in stage.iterdir() if p.name != JOB_FILE and not (fetched and p == local)]
    if fetched and local.is_dir():
        work += [p for p in local.iterdir() if p.name.startswith(".")]  # a job's work folder inside the store
    if not work:
        shutil.rmtree(stage, ignore_errors=True)


def _as_remote(exc: NrrError, local: Path, url: fs.Url) -> NrrError:
    """The same error, naming the output URL where it names the staged copy (not its hidden work folders,
    which stay local: a message telling where finished work is kept must point there)."""
    pattern = re.compile(re.escape(path_text(local)) + r"(?=/[^.]|$|[\s:;,)'\"])")
    path = None if exc.path is None else pattern.sub(str(url), exc.path)
    return type(exc)(path, pattern.sub(str(url), exc.problem))


# -- moving bytes ----------------------------------------------------------------------------------------
def fetch_store(url: fs.Url, local: Path) -> None:
    """Copy a remote store into ``local`` (kept when it is already that store: same manifest bytes)."""
    from nrrstore.format.layout import MANIFEST_NAME
    from nrrstore.format.manifest import Manifest
    from nrrstore.format.outputs import install_folder

    manifest = fs.read_bytes(url / MANIFEST_NAME)
    if (local / MANIFEST_NAME).is_file() and (local / MANIFEST_NAME).read_bytes() == manifest:
        return
    m = Manifest.from_dict(json.loads(manifest), str(url / MANIFEST_NAME))
    tmp = tmp_name(local)
    shutil.rmtree(tmp, ignore_errors=True)
    filesystem, _ = fs.filesystem(url)
    for f in m.files:
        dst = tmp / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fs.remote_errors(url / f.path):
            filesystem.get_file(fs.object_path(url / f.path), str(dst))
    (tmp / MANIFEST_NAME).write_bytes(manifest)
    fsync_dir(tmp)
    install_folder(tmp, local)


def publish(local: Path, url: fs.Url, marker: str) -> None:
    """Upload ``local`` to ``url``: changed objects, then the marker, then removal of stale objects.

    Objects that the remote marker vouches for with the same checksum are not sent again. When an
    object the remote marker vouches for is about to change, the marker is deleted first, so a reader
    sees an unfinished output rather than a mix of old and new objects.
    """
    filesystem, _ = fs.filesystem(url)
    remote = fs.list_files(url)
    mine = fs.list_files(local)
    new_marker = (local / marker).read_bytes()
    old = _vouched(fs.read_bytes(url / marker)) if marker in remote else {}
    new = _vouched(new_marker)
    send = [rel for rel in mine if rel != marker
            and not (rel in old and rel in new and old[rel] == new[rel] and remote.get(rel) == mine[rel])]
    if marker in remote and any(rel in remote for rel in send):
        _rm(filesystem, url / marker)
    for rel in send:
        with fs.remote_errors(url / rel):
            filesystem.put_file(str(local / rel), fs.object_path(url / rel))
    with fs.remote_errors(url / marker):
        filesystem.pipe_file(fs.object_path(url / marker), new_marker)
    for rel in remote:
        if rel not in mine:
            _rm(filesystem, url / rel)


def _rm(filesystem: Any, url: fs.Url) -> None:
    with fs.remote_errors(url):
        filesystem.rm_file(fs.object_path(url))


def _vouched(marker: bytes) -> dict[str, str]:
    """path -> sha256 of the files a marker lists (a store manifest's ``files``, prepare's ``shards``)."""
    try:
        doc = json.loads(marker)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    if isinstance(doc.get("files"), list):
        return {str(f.get("path")): str(f.get("sha256")) for f in doc["files"] if isinstance(f, dict)}
    if isinstance(doc.get("shards"), list):
        return {str(f.get("name")): str(f.get("sha256")) for f in doc["shards"] if isinstance(f, dict)}
    return {}
