"""Counter-based generator: published known answers, scalar == vectorized, ranges, permutations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nrrstore.errors import NrrError
from nrrstore.sampling import rng

# Random123 tests/kat_vectors (github.com/DEShawResearch/random123): CTR[4], KEY[2] -> OUT[4].
KAT_10 = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
KAT_7 = [
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]

u32 = st.integers(0, 2**32 - 1)
seeds = st.integers(0, 2**64 - 1)


@pytest.mark.parametrize("ctr,key,want", KAT_10)
def test_philox_known_answers_scalar(ctr, key, want):
    assert rng.philox4x32(ctr, key) == want


@pytest.mark.parametrize("ctr,key,want", KAT_7)
def test_philox_known_answers_7_rounds(ctr, key, want):
    assert rng.philox4x32(ctr, key, rounds=7) == want
    got = rng.philox4x32_array(*ctr, *key, rounds=7)
    assert tuple(int(w[()]) for w in got) == want


@pytest.mark.parametrize("ctr,key,want", KAT_10)
def test_philox_known_answers_array(ctr, key, want):
    got = rng.philox4x32_array(*([c] * 3 for c in ctr), *key)
    for w, expect in zip(got, want, strict=True):
        assert w.dtype == np.uint64
        assert w.tolist() == [expect] * 3


def test_seed_is_the_key_and_counter_pads_with_zeros():
    key = (0xA4093822, 0x299F31D0)
    seed = key[0] | (key[1] << 32)
    assert rng.block(seed, 0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344) == KAT_10[2][2]
    assert rng.block(0, 0) == KAT_10[0][2]
    assert rng.block(5, 7) == rng.block(5, 7, 0, 0)


def test_bit_mapping_golden():
    # uniform/randint are defined from the KAT block of zeros: w0 = 0x6627e8d5, w1 = 0xe169c58d.
    b = (0x6627E8D5 << 32) | 0xE169C58D
    assert rng.bits64(0, 0) == b
    assert rng.uniform(0, 0) == (b >> 11) * 2.0**-53
    assert rng.randint(0, 0, n=1000) == (b * 1000) >> 64
    assert rng.uniform(0, 1, 2, 3) == 0.5734127510302994


@settings(max_examples=60, deadline=None)
@given(seed=seeds, c=st.lists(u32, min_size=4, max_size=4), n=st.integers(1, 2**32))
def test_vectorized_equals_scalar(seed, c, n):
    assert int(rng.bits64_array(seed, *c)[()]) == rng.bits64(seed, *c)
    assert float(rng.uniform_array(seed, *c)[()]) == rng.uniform(seed, *c)
    r = rng.randint(seed, *c, n=n)
    assert 0 <= r < n
    assert int(rng.randint_array(seed, n, *c)[()]) == r
    words = rng.words_array(seed, *c)
    assert tuple(int(w[()]) for w in words) == rng.block(seed, *c)


def test_uniforms_matrix_matches_scalar():
    idx = np.array([0, 5, 2**32 - 1, 17])
    m = rng.uniforms(123, 1, 9, idx, 5)
    assert m.shape == (4, 5) and m.dtype == np.float64
    for a, i in enumerate(idx):
        for j in range(5):
            assert m[a, j] == rng.uniform(123, 1, 9, int(i), j)


def test_ranges_and_rough_uniformity():
    u = rng.uniform_array(7, 1, 2, np.arange(100_000))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    o = rng.uniform_open_array(7, 1, 2, np.arange(100_000))
    assert o.min() > 0.0 and o.max() < 1.0
    r = rng.randint_array(7, 10, 3, np.arange(100_000))
    counts = np.bincount(r, minlength=10)
    assert counts.shape == (10,) and counts.min() > 9_500 and counts.max() < 10_500


def test_randint_extremes():
    assert rng.randint_array(1, 1, np.arange(50)).tolist() == [0] * 50
    full = rng.randint_array(1, 2**32, np.arange(50))
    assert full.tolist() == [rng.randint(1, i, n=2**32) for i in range(50)]
    assert full.tolist() == [rng.block(1, i)[0] for i in range(50)]
    per_row = rng.randint_array(1, np.array([3, 1000, 2**31]), 4, np.array([0, 1, 2]))
    assert per_row.tolist() == [rng.randint(1, 4, i, n=n) for i, n in enumerate([3, 1000, 2**31])]


@settings(max_examples=40, deadline=None)
@given(seed=seeds, c=st.lists(u32, max_size=3), n=st.integers(0, 300))
def test_permutation_is_a_permutation(seed, c, n):
    p = rng.permutation(seed, *c, n=n)
    assert p.dtype == np.int64
    assert sorted(p.tolist()) == list(range(n))
    assert np.array_equal(p, rng.permutation(seed, *c, n=n))


def test_permutation_depends_on_seed_and_counter():
    base = rng.permutation(0, 1, 2, n=50)
    assert not np.array_equal(base, rng.permutation(1, 1, 2, n=50))
    assert not np.array_equal(base, rng.permutation(0, 1, 3, n=50))
    assert base.tolist() == np.argsort(
        [rng.bits64(0, 1, 2, 0, m) for m in range(50)], kind="stable").tolist()


@pytest.mark.parametrize("bad", [
    lambda: rng.uniform(-1, 0),
    lambda: rng.uniform(2**64, 0),
    lambda: rng.uniform(0, 2**32),
    lambda: rng.uniform(0, 1, 2, 3, 4, 5),
    lambda: rng.randint(0, 1, n=0),
    lambda: rng.uniform_array(0, np.array([-1])),
    lambda: rng.uniform_array(0, np.array([0.5])),
    lambda: rng.randint_array(0, 0, 1),
    lambda: rng.permutation(0, 1, 2, 3, 4, n=3),
])
def test_bad_arguments_raise(bad):
    with pytest.raises(NrrError):
        bad()
