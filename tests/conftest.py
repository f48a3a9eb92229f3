"""Shared test fixtures: where the real data lives, and `nrrstore_cli` importable from a checkout."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
FMNIST_SUBSET = DATA / "fashion-mnist"
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Hugging Face `datasets` (test_ecosystem, README's example) works offline, caching in a scratch folder.
_HF_HOME = tempfile.mkdtemp(prefix="nrrstore-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, True)
os.environ.update(HF_HOME=_HF_HOME, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def _install_cli_shim() -> None:
    """Map the import package `nrrstore_cli` to ``cli/`` when nrrstore is not pip-installed."""
    if importlib.util.find_spec("nrrstore_cli") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "nrrstore_cli", ROOT / "cli" / "__init__.py", submodule_search_locations=[str(ROOT / "cli")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nrrstore_cli"] = module
    spec.loader.exec_module(module)


_install_cli_shim()


@pytest.fixture(scope="session")
def fmnist_train_shards() -> Path:
    """The committed Fashion-MNIST subset, train split (300 per class, 3 gzipped shards)."""
    return FMNIST_SUBSET / "train"


@pytest.fixture(scope="session")
def fmnist_test_shards() -> Path:
    """The committed Fashion-MNIST subset, test split (100 per class, 1 gzipped shard)."""
    return FMNIST_SUBSET / "test"


@pytest.fixture(scope="session")
def fmnist_classes() -> list[str]:
    return (FMNIST_SUBSET / "classes.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def fmnist_idx() -> dict[str, Path]:
    """Paths of the full Fashion-MNIST IDX files from the Debian package (skips when not installed)."""
    files = {
        "train_images": FMNIST_DEBIAN / "train-images-idx3-ubyte.gz",
        "train_labels": FMNIST_DEBIAN / "train-labels-idx1-ubyte.gz",
        "test_images": FMNIST_DEBIAN / "t10k-images-idx3-ubyte.gz",
        "test_labels": FMNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz",
    }
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        pytest.skip(f"Fashion-MNIST IDX files not installed ({missing[0]}); apt-get install dataset-fashion-mnist")
    return files


@pytest.fixture
def single_thread():
    """torch on one thread: on a shared 2-core machine two threads per process oversubscribe badly."""
    from tests._teacher import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="module")
def teacher():
    """The small real teacher of tests/_teacher.py, loaded from its checkpoint file."""
    from nrrstore.models import load_teacher
    from tests._teacher import one_thread, teacher_path

    with one_thread():
        return load_teacher(teacher_path())


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on 127.0.0.1 (a free port) for the whole session; stopped at the end."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from tests._remote import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_s3, monkeypatch, tmp_path):
    """A fresh bucket on the moto server, this process's environment pointed at it: yields ``s3://bucket``.

    ``NRRSTORE_STAGING`` (where remote writes are staged) goes to the test's temporary folder.
    """
    from tests._remote import reset_fsspec

    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NRRSTORE_STAGING", str(tmp_path / "staging"))
    reset_fsspec()
    yield f"s3://{moto_s3.new_bucket()}"
    reset_fsspec()


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server (Range requests) over ``tmp_path / "www"``: yields (folder, server)."""
    from tests._remote import RangeHTTP

    root = tmp_path / "www"
    root.mkdir()
    server = RangeHTTP(root)
    yield root, server
    server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device (benchmarks/gpu_check.sh runs them)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run by benchmarks/gpu_check.sh)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
