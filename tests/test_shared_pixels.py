"""The decode cache that a loader's processes share (issue 28): reached by any process, sized to what memory
holds, never left behind."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle

import pytest
import torch

from nrrstore.replay import shared_pixels
from nrrstore.replay.shared_pixels import SharedPixels

pytestmark = pytest.mark.skipif(shared_pixels._memory_folder() is None, reason="needs a writable /dev/shm")

SHAPE = (3, 4, 5)


def _block(seed: int, rows: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (rows, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _read_in_child(shared: SharedPixels, b: int) -> list[int]:
    got = shared.get(b, 2)
    return [] if got is None else got.flatten().tolist()


def test_a_spawned_process_reads_what_its_creator_stored() -> None:
    shared = SharedPixels.create(4, 2, SHAPE)
    assert shared is not None
    assert shared.get(1, 2) is None and not shared.has(1)
    shared.put(1, _block(1))
    got = shared.get(1, 2)
    assert shared.has(1) and got is not None and torch.equal(got, _block(1))
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # pickled across, mapped again through /proc
        assert pool.apply(_read_in_child, (shared, 1)) == _block(1).flatten().tolist()
        assert pool.apply(_read_in_child, (shared, 2)) == []
    copy = pickle.loads(pickle.dumps(shared))
    got = copy.get(1, 2)
    assert got is not None and torch.equal(got, _block(1))


def test_fill_decodes_once_and_later_calls_read() -> None:
    shared = SharedPixels.create(2, 2, SHAPE)
    assert shared is not None
    calls = []

    def decode() -> torch.Tensor:
        calls.append(1)
        return _block(7)

    assert torch.equal(shared.fill(0, 2, decode), _block(7)) and torch.equal(shared.fill(0, 2, decode), _block(7))
    assert len(calls) == 1
    short = shared.fill(1, 1, lambda: _block(8, rows=1))  # the store's last block may hold fewer images
    assert torch.equal(short, _block(8, rows=1))


def test_a_full_dev_shm_gets_a_smaller_region_not_a_sigbus(monkeypatch) -> None:
    """/dev/shm is 64 MB in a default container: the region is reserved up front, halved until it fits."""
    limit = 2 * 2 * 60 + shared_pixels.PAGE  # room for two blocks of two 3x4x5 images

    def fallocate(fd: int, offset: int, size: int) -> None:
        if size > limit:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_pixels.os, "posix_fallocate", fallocate)
    shared = SharedPixels.create(8, 2, SHAPE)
    assert shared is not None and shared.count == 2
    monkeypatch.setattr(shared_pixels.os, "posix_fallocate", lambda fd, o, s: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert SharedPixels.create(8, 2, SHAPE) is None  # nothing fits: the loader decodes without it


def test_nothing_is_left_in_dev_shm() -> None:
    shared = SharedPixels.create(2, 2, SHAPE)
    assert shared is not None and shared._fd is not None
    shared.put(0, _block(3))
    assert os.fstat(shared._fd[1]).st_nlink == 0  # unlinked at creation: a kill -9 leaves nothing either


def test_a_reused_descriptor_number_is_never_written(tmp_path) -> None:
    """Once the creator closes its descriptor, its number may name another file: a process that maps the region
    later must find that out, not write pixels into that file."""
    shared = SharedPixels.create(2, 2, SHAPE)
    assert shared is not None and shared._fd is not None
    copy = pickle.loads(pickle.dumps(shared))  # as a spawned worker holds it
    number = shared._fd[1]
    del shared  # the creator closes the region's descriptor
    other = tmp_path / "other.bin"
    other.write_bytes(b"keep")
    fd = os.open(other, os.O_RDWR)
    try:
        if fd != number:
            os.dup2(fd, number)  # the old number now names another file
        copy.put(0, _block(3))
        assert copy.get(0, 2) is None and other.read_bytes() == b"keep"
    finally:
        os.close(fd)
        if fd != number:
            os.close(number)
