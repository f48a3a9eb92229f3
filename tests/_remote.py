"""Loopback servers for remote stores: moto's S3 API and a plain HTTP server with Range requests.

Both listen on 127.0.0.1 at a free port and are stopped by their fixtures; nothing leaves the machine.
The S3 fixture points every S3 client of this process (and of its subprocesses) at moto through the
environment (``AWS_ENDPOINT_URL`` and fake credentials), the way a user points nrrstore at MinIO or
another S3-compatible endpoint.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_SECURITY_TOKEN": "testing",
                    "AWS_SESSION_TOKEN": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """moto's standalone S3 server in a thread, counting the requests it serves (method, path)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: Counter[tuple[str, str]] = Counter()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self._count_requests()

    def _count_requests(self) -> None:
        server = self._server._server  # werkzeug's server: wrap its WSGI app to count what reaches the API
        assert server is not None  # set by start()
        inner = server.app

        def counting(environ, start_response):
            self.requests[(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))] += 1
            return inner(environ, start_response)

        server.app = counting

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict[str, str]:
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def new_bucket(self) -> str:
        import boto3

        name = f"b-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs()).create_bucket(Bucket=name)
        return name


def _boto_kwargs() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def reset_fsspec() -> None:
    """Forget cached filesystem instances, so the next one reads the environment afresh."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


def bucket_files(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket: key -> bytes (read with boto3, independently of nrrstore)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def upload_folder(endpoint: str, folder: Path, bucket: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class RangeHTTP:
    """A loopback HTTP server over a folder that honours Range requests and counts requests per path."""

    def __init__(self, root: Path) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        counts, sent = self.requests, self.sent

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _body(self, head: bool) -> None:
                counts[(self.command, self.path)] += 1
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                rng = self.headers.get("Range")
                if rng:
                    lo, _, hi = rng.removeprefix("bytes=").partition("-")
                    start, stop = int(lo), min(int(hi) + 1 if hi else len(data), len(data))
                    body = data[start:stop]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                    sent[self.path] += len(body)

            def do_GET(self) -> None:
                self._body(head=False)

            def do_HEAD(self) -> None:
                self._body(head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def hidden_module(name: str) -> Iterator[None]:
    """Make ``import name`` fail as if the package were not installed (an optional extra missing)."""
    import sys

    saved = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
    for k in saved:
        del sys.modules[k]
    sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        del sys.modules[name]
        sys.modules.update(saved)
