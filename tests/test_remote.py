"""Stores and shards on S3 (moto's server on 127.0.0.1) and over http: written, read, resumed, refused.

Every remote test runs against a real S3 API: moto's standalone server, started by the session
fixture ``moto_s3`` on a free loopback port; the ``s3`` fixture gives each test a fresh bucket and
points the environment (``AWS_ENDPOINT_URL``, fake credentials) at it, as a user points nrrstore at
an S3-compatible endpoint. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nrrstore.distill.pipeline import distill, method_config
from nrrstore.errors import NrrError
from nrrstore.format import fs, remote
from nrrstore.models import load_teacher
from nrrstore.sources.shards import iter_samples
from nrrstore.train.loader import make_loader
from nrrstore_cli.main import app
from tests._builders import write_fmnist_store
from tests._real import FMNIST_TEST, FMNIST_TRAIN
from tests._remote import bucket_files, hidden_module, local_files, upload_folder
from tests._teacher import one_thread, teacher_path

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = ["--ipc", "2", "--mipc", "12", "--num-crop", "3", "--iterations", "3"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with one_thread():
        yield


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(res, *parts: str) -> None:
    assert res.exit_code == 1, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nrrstore: "), res.stderr
    assert "Traceback" not in res.output
    for part in parts:
        assert part in lines[0], (part, lines[0])


def objects(moto_s3, url: str) -> dict[str, bytes]:
    """The objects under an ``s3://bucket/prefix`` URL, keyed by path below the prefix."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    base = prefix.rstrip("/") + "/" if prefix else ""
    return {k[len(base):]: v for k, v in bucket_files(moto_s3.endpoint, bucket).items() if k.startswith(base)}


def staging_empty(tmp_path: Path) -> bool:
    root = tmp_path / "staging"
    return not root.exists() or not any(root.iterdir())


def upload_train(moto_s3, s3: str) -> str:
    bucket = s3.removeprefix("s3://")
    upload_folder(moto_s3.endpoint, FMNIST_TRAIN, bucket, "train")
    return f"{s3}/train"


def image_tree(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    """A small ImageFolder tree of real Fashion-MNIST images (PNG)."""
    counts: dict[int, int] = {}
    for s in iter_samples(FMNIST_TEST):
        if s.label < classes and counts.get(s.label, 0) < per_class:
            folder = root / f"class{s.label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.image).save(folder / f"{s.key}.png")
            counts[s.label] = counts.get(s.label, 0) + 1
    return root


# -- writing ---------------------------------------------------------------------------------------------
def test_prepare_to_s3_is_the_local_output_byte_for_byte(s3: str, moto_s3, tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    res = cli("prepare", "imagefolder", tree, "--out", f"{s3}/shards", "--shard-size", "5")
    assert res.exit_code == 0, res.output
    assert cli("prepare", "imagefolder", tree, "--out", tmp_path / "local", "--shard-size", "5").exit_code == 0
    assert objects(moto_s3, f"{s3}/shards") == local_files(tmp_path / "local")
    assert staging_empty(tmp_path)
    # the shards read back as input, classes.txt beside them included
    samples = list(iter_samples(f"{s3}/shards"))
    assert len(samples) == 12 and {s.label for s in samples} == {0, 1, 2}
    # an existing output is refused, and replaced with --overwrite
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", f"{s3}/shards"), "already exists", "--overwrite")
    res = cli("prepare", "imagefolder", tree, "--out", f"{s3}/shards", "--shard-size", "7", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(objects(moto_s3, f"{s3}/shards")) == ["classes.txt", "shards.json", "train-000000.tar",
                                                       "train-000001.tar"]  # the third old shard is gone


def test_distill_s3_to_s3_then_stream_and_verify(s3: str, moto_s3, tmp_path: Path) -> None:
    src = upload_train(moto_s3, s3)
    out = f"{s3}/stores/nrr"
    opts = (*SMALL, "--relabel-epochs", "2", "--full-softlabels", "--save-cams")
    res = cli("distill", "--in", src, "--out", out, "--teacher", teacher_path(), *opts)
    assert res.exit_code == 0, res.output
    local = tmp_path / "local"
    res = cli("distill", "--in", src, "--out", local, "--teacher", teacher_path(), *opts)
    assert res.exit_code == 0, res.output
    assert objects(moto_s3, out) == local_files(local)  # the same bytes, remote or local
    assert staging_empty(tmp_path)

    res = cli("verify", out)
    assert res.exit_code == 0 and res.stdout.strip() == f"{out}: ok", res.output
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["num_images"] == 20 and info["path"] == out

    # the loader streams from s3: the same batches as from the local copy, with and without workers
    want = list(make_loader(local, epoch=1, batch_size=8))
    moto_s3.requests.clear()
    got = list(make_loader(out, epoch=1, batch_size=8))
    for a, b in zip(got, want, strict=True):
        for k in ("images", "y", "y_partner", "lam", "d_org", "d_aug", "index"):
            assert torch.equal(a[k], b[k]), k
    gets = {path: n for (method, path), n in moto_s3.requests.items() if method == "GET"}
    assert all(n == 1 for path, n in gets.items() if not path.endswith(".tar")), gets  # manifest, index, table
    assert sum(n for path, n in gets.items() if path.endswith(".tar")) <= 2  # 20 images: one partner group
    assert not any(method == "HEAD" for method, _ in moto_s3.requests), moto_s3.requests  # sizes: manifest
    for a, b in zip(make_loader(out, epoch=0, batch_size=8, workers=2, labels="kd"),
                    make_loader(local, epoch=0, batch_size=8, labels="kd"), strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["soft"], b["soft"])  # zarr over s3
    assert cli("inspect", out, "--grid", tmp_path / "sheet.png", "--per-class", "2").exit_code == 0  # CAMs too

    # relabel in place: only the changed label file and the manifest travel (the images are vouched for)
    moto_s3.requests.clear()
    args = ("--teacher", teacher_path(), "--epochs", "2", "--precision", "fp32", "--overwrite")
    res = cli("relabel", out, *args)
    assert res.exit_code == 0, res.output
    assert cli("relabel", local, *args).exit_code == 0
    assert objects(moto_s3, out) == local_files(local)
    puts = [path for (method, path), n in moto_s3.requests.items() if method == "PUT"]
    assert not any("/images/" in p or p.endswith("index.parquet") for p in puts), puts
    assert staging_empty(tmp_path)
    # the other readers of a remote store: size-report, export (to a local folder), kd labels from zarr
    want, got = (json.loads(cli("size-report", s, "--json").stdout) for s in (local, out))
    assert got["components"] == want["components"]
    assert cli("export", out, "--to", "imagefolder", tmp_path / "exp").exit_code == 0
    assert cli("export", local, "--to", "imagefolder", tmp_path / "exp2").exit_code == 0
    a, b = local_files(tmp_path / "exp"), local_files(tmp_path / "exp2")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "export.json")

    # a damaged object is found, one line per problem
    bucket, _, key = f"{out}/images/shard-000000.tar".removeprefix("s3://").partition("/")
    import boto3

    client = boto3.client("s3", endpoint_url=moto_s3.endpoint)
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[700] ^= 0x10
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    client.put_object(Bucket=bucket, Key=key.replace("shard-000000.tar", "stray.txt"), Body=b"x")
    res = cli("verify", out)
    assert res.exit_code == 1, res.output
    assert res.stdout.strip().splitlines() == [(f"{out}/images/shard-000000.tar: sha256 mismatch (file changed or "
                                                f"corrupt)"), f"{out}/images/stray.txt: not listed in the manifest"]


KILL = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
import torch; torch.set_num_threads(1)
from nrrstore.distill.pipeline import distill, method_config
from nrrstore.models import load_teacher
t = load_teacher({teacher!r})
cfg = method_config("nrr", 2, 28, cidd={{"mipc": 12, "num_crop": 3}}, nrr={{"iterations": 3}},
                    classes_per_pass=5)
def hook(c):
    if c == 4:
        os.kill(os.getpid(), signal.SIGKILL)
distill({data!r}, t, {out!r}, cfg, after_class=hook)
"""


def _distill(src: str, out: str | Path):
    teacher = load_teacher(teacher_path())
    cfg = method_config("nrr", 2, teacher.image_size, cidd={"mipc": 12, "num_crop": 3}, nrr={"iterations": 3},
                        classes_per_pass=5)  # NRR refines 5-class groups: the kill after class 4 ends a group
    return distill(src, teacher, out, cfg)


def test_killed_distill_to_s3_resumes_byte_identically(s3: str, moto_s3, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = upload_train(moto_s3, s3)
    _distill(src, tmp_path / "ref")
    out = f"{s3}/st"
    script = KILL.format(root=str(ROOT), teacher=str(teacher_path()), data=src, out=out)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert objects(moto_s3, out) == {}  # nothing a reader could take for a store
    work = remote.stage_dir(fs.Url(out)) / ".work-st"
    assert sorted(p.name for p in work.glob("class-*.json")) == [f"class-{c:05d}.json" for c in range(5)]
    result = _distill(src, out)  # the same arguments: resumes at class 5
    assert result.summary["classes_done_before"] == 5
    assert objects(moto_s3, out) == local_files(tmp_path / "ref")
    assert staging_empty(tmp_path)

    # An upload cut short leaves objects without their manifest: refused as unfinished, and resumed.
    out2 = f"{s3}/st2"
    import s3fs

    from tests._remote import reset_fsspec

    put = s3fs.S3FileSystem._put_file
    calls = []

    async def failing_put(self, lpath, rpath, *args, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:  # the second of index.parquet and the shard
            raise ConnectionError("connection reset by peer")
        return await put(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing_put)
    reset_fsspec()  # instances bind their methods when made
    with pytest.raises(NrrError, match="connection reset"):
        _distill(src, out2)
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", put)
    reset_fsspec()
    partial = objects(moto_s3, out2)
    assert partial and "manifest.json" not in partial
    assert_one_line(cli("verify", out2), f"{out2}/manifest.json", "unfinished remote write",
                    "rerun the same command to resume it")
    assert_one_line(cli("inspect", out2), "unfinished remote write")
    result = _distill(src, out2)
    assert "classes_done_before" in result.summary  # the staged result, not a new run
    assert objects(moto_s3, out2) == local_files(tmp_path / "ref")
    assert staging_empty(tmp_path)


# -- bad input -------------------------------------------------------------------------------------------
def test_urls_nrrstore_cannot_handle_are_refused(s3: str, moto_s3, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tree = image_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "staging").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    # a scheme nrrstore cannot handle: never written as a local folder named "ftp:"
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", "ftp://host/x"), "ftp://host/x",
                    "unsupported URL scheme ftp://")
    assert_one_line(cli("distill", "--in", FMNIST_TRAIN, "--out", "ftp://host/x", "--teacher", teacher_path(),
                        "--ipc", "1"), "unsupported URL scheme")
    assert_one_line(cli("verify", "foo://x/y"), "foo://x/y", "unsupported URL scheme foo://")
    assert_one_line(cli("teacher", "eval", "--teacher", teacher_path(), "--in", "foo://x/y.tar"), "unsupported")
    # http is read-only; commands without remote outputs refuse URLs as outputs
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", "http://127.0.0.1:9/x"), "read-only")
    write_fmnist_store(tmp_path / "st", per_class=1)
    before.append("st")
    assert_one_line(cli("export", tmp_path / "st", "--to", "imagefolder", f"{s3}/export"), "must be a local path")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert objects(moto_s3, s3) == {}
    assert staging_empty(tmp_path)


def test_missing_remote_things_are_one_line(s3: str, moto_s3, tmp_path: Path) -> None:
    upload_train(moto_s3, s3)
    tree = image_tree(tmp_path / "tree", per_class=1)
    assert_one_line(cli("verify", "s3://no-such-bucket/st"), "s3://no-such-bucket", "bucket 'no-such-bucket' "
                    "does not exist")
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", "s3://no-such-bucket/x"), "does not exist")
    assert_one_line(cli("verify", f"{s3}/nothing"), f"{s3}/nothing: no such store")
    assert_one_line(cli("inspect", f"{s3}/train/nope-000000.tar.gz"), "nope-000000.tar.gz",
                    "no such file or object")
    assert_one_line(cli("inspect", f"{s3}/train/train-{{000000..000009}}.tar.gz"), "train-000003.tar.gz",
                    "no such file or object (from the pattern")
    assert_one_line(cli("teacher", "eval", "--teacher", teacher_path(), "--in", f"{s3}/absent/"),
                    f"{s3}/absent", "no such file or object")
    # an existing output needs --overwrite; a prefix holding someone else's objects is not written into
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", f"{s3}/train"), "already exists", "--overwrite")
    fs.filesystem(fs.Url(s3))[0].pipe_file(f"{s3.removeprefix('s3://')}/notes/readme.md", b"mine")
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", f"{s3}/notes", "--overwrite"),
                    "holds other objects (readme.md)", "is not a folder made by prepare")
    assert objects(moto_s3, f"{s3}/notes") == {"readme.md": b"mine"}
    assert staging_empty(tmp_path)


def test_missing_extras_name_the_install(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    loaded = importlib.import_module("fsspec.registry")._registry  # (fsspec.registry is also a mapping's name)
    for scheme, module, extra in (("s3", "s3fs", "s3"), ("gs", "gcsfs", "gcs")):
        monkeypatch.delitem(loaded, scheme, raising=False)  # forget the class fsspec loaded before
        with hidden_module(module):
            res = cli("verify", f"{scheme}://bucket/store")
            assert_one_line(res, f"{scheme}://bucket/store", f"needs the {module} package",
                            f"pip install 'nrrstore[{extra}]'")
            assert_one_line(cli("prepare", "imagefolder", image_tree(tmp_path / "t", 1), "--out",
                                f"{scheme}://bucket/x"), f"pip install 'nrrstore[{extra}]'")
            assert_one_line(cli("distill", "--in", FMNIST_TRAIN, "--out", f"{scheme}://bucket/x", "--teacher",
                                teacher_path(), "--ipc", "1"), f"pip install 'nrrstore[{extra}]'")
    assert not list(tmp_path.glob("**/.work-*")) and not any(Path(f"{s}:").exists() for s in ("s3", "gs"))
    assert staging_empty(tmp_path)


def test_bad_credentials_and_denied_bucket(s3: str, moto_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import settings

    from tests._remote import reset_fsspec

    upload_train(moto_s3, s3)
    iam = boto3.client("iam", endpoint_url=moto_s3.endpoint)
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="other-bucket-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*",
                       "Resource": ["arn:aws:s3:::other", "arn:aws:s3:::other/*"]}],
    }))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # from now on moto checks every request
    reset_fsspec()
    tree = image_tree(tmp_path / "tree", per_class=1)
    # the fake test credentials are unknown to IAM: bad credentials
    assert_one_line(cli("inspect", f"{s3}/train"), "access denied", "Access Key Id")
    # a real user whose policy does not cover this bucket: denied, for reading and for writing
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.delenv("AWS_SECURITY_TOKEN")
    reset_fsspec()
    assert_one_line(cli("inspect", f"{s3}/train"), f"{s3}/train", "access denied")
    assert_one_line(cli("prepare", "imagefolder", tree, "--out", f"{s3}/new"), "access denied")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert sorted(objects(moto_s3, s3)) == sorted(f"train/{k}" for k in local_files(FMNIST_TRAIN))
    assert staging_empty(tmp_path)


# -- http --------------------------------------------------------------------------------------------------
def test_shards_over_http(http_root) -> None:
    import shutil

    www, server = http_root
    shutil.copytree(FMNIST_TEST, www / "test")
    url = f"{server.url}/test/test-000000.tar.gz"
    info = json.loads(cli("inspect", url, "--json").stdout)
    assert info["num_images"] == 1000 and info["per_class"]["Trouser"] == 100  # classes.txt beside it, over http
    assert_one_line(cli("inspect", f"{server.url}/test/missing.tar"), "missing.tar", "no such file or object")
    want = [(s.key, s.label, s.image) for s in iter_samples(FMNIST_TEST)][:50]
    got = [(s.key, s.label, s.image) for s, _ in zip(iter_samples(url), range(50), strict=False)]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert all(np.array_equal(g[2], w[2]) for g, w in zip(got, want, strict=True))
