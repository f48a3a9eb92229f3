"""Counter-based random numbers that are identical on every platform and library version.

Why not numpy.random / torch / `random`: their streams are stateful and have changed between
releases, so a store written today could not be replayed by a loader next year. Seeded
augmentation replay needs a pure function ``(seed, counter) -> bits`` instead.

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; reference code Random123), written here with explicit integer arithmetic and checked
against Random123's published known-answer vectors (``tests/test_rng.py``).

Conventions used by every function below:

* ``seed`` is an integer in ``[0, 2**64)``; it is the Philox key: ``key = (seed & 0xFFFFFFFF,
  seed >> 32)``.
* A *counter* is 1 to 4 integers, each in ``[0, 2**32)``; missing trailing words are 0. One
  counter gives one 128-bit block ``(w0, w1, w2, w3)``.
* ``bits64`` of a block is ``(w0 << 32) | w1``; a uniform double is ``(bits64 >> 11) * 2**-53``
  (53 random bits, exactly representable, in ``[0, 1)``); an integer in ``[0, n)`` is
  ``(bits64 * n) >> 64`` (Lemire's multiply-shift without rejection: bias at most ``n / 2**64``,
  no floating point involved). Words w2, w3 are unused: one block per number keeps the mapping
  from counter to number trivial to re-implement.

The numpy functions broadcast their counter arguments and equal the scalar ones element by
element; they only use uint64 arithmetic on values below 2**64, so no overflow can occur.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nrrstore.errors import NrrError

GENERATOR = "philox4x32-10"
"""Name recorded in manifests; change it together with any change of the bit mapping."""

_M0 = 0xD2511F53
_M1 = 0xCD9E8D57
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_ROUNDS = 10
_TWO_M53 = 2.0**-53

ArrayLike = int | np.ndarray | Sequence[int]


def _check_seed(seed: int) -> tuple[int, int]:
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise NrrError(None, f"seed must be an integer in [0, 2**64), got {seed}")
    return seed & _MASK32, seed >> 32


def _check_counter(counter: Sequence[int]) -> tuple[int, int, int, int]:
    if not 1 <= len(counter) <= 4:
        raise NrrError(None, f"a counter has 1 to 4 words, got {len(counter)}")
    words = [int(c) for c in counter]
    for c in words:
        if not 0 <= c <= _MASK32:
            raise NrrError(None, f"counter words must be in [0, 2**32), got {c}")
    words += [0] * (4 - len(words))
    return words[0], words[1], words[2], words[3]


# --------------------------------------------------------------------------------------------
# The block function.


def philox4x32(
    counter: Sequence[int], key: Sequence[int], rounds: int = _ROUNDS
) -> tuple[int, int, int, int]:
    """Philox4x32-R on one block with Python integers (the reference; see Random123).

    Round r uses key + r * (W0, W1); ``counter`` is 4 words, ``key`` 2 words, all uint32.
    """
    c0, c1, c2, c3 = (int(c) & _MASK32 for c in counter)
    k0, k1 = (int(k) & _MASK32 for k in key)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0,
            p1 & _MASK32,
            (p0 >> 32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
    return c0, c1, c2, c3


def philox4x32_array(
    c0: ArrayLike, c1: ArrayLike, c2: ArrayLike, c3: ArrayLike, k0: int, k1: int,
    rounds: int = _ROUNDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized Philox4x32-R: broadcast counter words -> four uint64 arrays of uint32 values."""
    x0, x1, x2, x3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3)))
    mask = np.uint64(_MASK32)
    x0, x1, x2, x3 = (x & mask for x in (x0, x1, x2, x3))  # also makes writable copies
    m0, m1, shift = np.uint64(_M0), np.uint64(_M1), np.uint64(32)
    ka, kb = int(k0) & _MASK32, int(k1) & _MASK32
    for r in range(rounds):
        if r:
            ka = (ka + _W0) & _MASK32
            kb = (kb + _W1) & _MASK32
        p0 = x0 * m0  # < 2**64: exact in uint64
        p1 = x2 * m1
        x0, x1, x2, x3 = (
            (p1 >> shift) ^ x1 ^ np.uint64(ka),
            p1 & mask,
            (p0 >> shift) ^ x3 ^ np.uint64(kb),
            p0 & mask,
        )
    return x0, x1, x2, x3


# --------------------------------------------------------------------------------------------
# Scalar API.


def block(seed: int, *counter: int) -> tuple[int, int, int, int]:
    """The four uint32 words of the block at ``counter`` under ``seed``."""
    return philox4x32(_check_counter(counter), _check_seed(seed))


def bits64(seed: int, *counter: int) -> int:
    """64 random bits: ``(w0 << 32) | w1`` of the block."""
    w0, w1, _, _ = block(seed, *counter)
    return (w0 << 32) | w1


def uniform(seed: int, *counter: int) -> float:
    """A double in [0, 1) with 53 random bits (exact, no rounding)."""
    return (bits64(seed, *counter) >> 11) * _TWO_M53


def randint(seed: int, *counter: int, n: int) -> int:
    """An integer in [0, n), 1 <= n <= 2**32, by multiply-shift on 64 bits."""
    n = _check_n(n)
    return (bits64(seed, *counter) * n) >> 64


def permutation(seed: int, *counter: int, n: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` (int64), ``counter`` being at most 3 words.

    Element m gets the sort key ``bits64(seed, *counter, m)`` (counter zero-padded to 3 words);
    the permutation is the stable argsort of the keys, so it depends on nothing but the
    generator and a total order (ties, which need a 64-bit collision, fall back to index order).
    """
    if not 0 <= len(counter) <= 3:
        raise NrrError(None, f"a permutation counter has at most 3 words, got {len(counter)}")
    n = int(n)
    if not 0 <= n <= 2**32:
        raise NrrError(None, f"permutation size must be in [0, 2**32], got {n}")
    words = list(_check_counter([*counter, 0])[:3]) if counter else [0, 0, 0]
    keys = bits64_array(seed, words[0], words[1], words[2], np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable").astype(np.int64)


def _check_n(n: int) -> int:
    n = int(n)
    if not 1 <= n <= 2**32:
        raise NrrError(None, f"randint range must be in [1, 2**32], got {n}")
    return n


# --------------------------------------------------------------------------------------------
# Vectorized API (element-wise equal to the scalar one).


def bits64_array(
    seed: int, c0: ArrayLike, c1: ArrayLike = 0, c2: ArrayLike = 0, c3: ArrayLike = 0
) -> np.ndarray:
    """uint64 array of ``bits64(seed, c0, c1, c2, c3)`` over broadcast counter words."""
    w0, w1, _, _ = words_array(seed, c0, c1, c2, c3)
    return (w0 << np.uint64(32)) | w1


def words_array(
    seed: int, c0: ArrayLike, c1: ArrayLike = 0, c2: ArrayLike = 0, c3: ArrayLike = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four block words (uint64 arrays holding uint32) over broadcast counter words."""
    for c in (c0, c1, c2, c3):
        a = np.asarray(c)
        if a.size and (a.dtype.kind not in "iu" or int(a.min()) < 0 or int(a.max()) > _MASK32):
            raise NrrError(None, "counter words must be integers in [0, 2**32)")
    k0, k1 = _check_seed(seed)
    return philox4x32_array(c0, c1, c2, c3, k0, k1)


def uniform_array(
    seed: int, c0: ArrayLike, c1: ArrayLike = 0, c2: ArrayLike = 0, c3: ArrayLike = 0
) -> np.ndarray:
    """float64 array of ``uniform(seed, c0, c1, c2, c3)``."""
    b = bits64_array(seed, c0, c1, c2, c3)
    return (b >> np.uint64(11)).astype(np.float64) * _TWO_M53


def uniform_open_array(
    seed: int, c0: ArrayLike, c1: ArrayLike = 0, c2: ArrayLike = 0, c3: ArrayLike = 0
) -> np.ndarray:
    """float64 in the open interval (0, 1): ``(2 * (bits64 >> 12) + 1) * 2**-53``.

    For samplers that take logarithms of u and of 1 - u; 52 random bits, exact.
    """
    b = bits64_array(seed, c0, c1, c2, c3)
    odd = ((b >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)
    return odd.astype(np.float64) * _TWO_M53


def randint_array(
    seed: int, n: ArrayLike, c0: ArrayLike, c1: ArrayLike = 0, c2: ArrayLike = 0,
    c3: ArrayLike = 0,
) -> np.ndarray:
    """int64 array of ``randint(seed, c0, c1, c2, c3, n=n)``; ``n`` broadcasts too.

    ``(bits64 * n) >> 64`` is evaluated without a 128-bit product:
    with ``bits64 = hi * 2**32 + lo`` it equals ``(hi * n + ((lo * n) >> 32)) >> 32``,
    and every intermediate stays below 2**64 for n <= 2**32.
    """
    n_arr = np.asarray(n)
    if n_arr.size and (n_arr.dtype.kind not in "iu" or int(n_arr.min()) < 1
                       or int(n_arr.max()) > 2**32):
        raise NrrError(None, "randint range must be integers in [1, 2**32]")
    w0, w1, _, _ = words_array(seed, c0, c1, c2, c3)
    nn = n_arr.astype(np.uint64)
    # n == 2**32 would overflow hi * n; it is handled exactly as the top word.
    full = nn == np.uint64(2**32)
    nn_safe = np.where(full, np.uint64(1), nn)
    shift = np.uint64(32)
    out = (w0 * nn_safe + ((w1 * nn_safe) >> shift)) >> shift
    out = np.where(full, w0, out)
    return out.astype(np.int64)


def uniforms(seed: int, stream: int, epoch: int, indices: ArrayLike, k: int) -> np.ndarray:
    """float64 [len(indices), k]: ``out[n, j] = uniform(seed, stream, epoch, indices[n], j)``."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    slots = np.arange(int(k), dtype=np.int64).reshape(1, -1)
    return uniform_array(seed, stream, epoch, idx, slots)
