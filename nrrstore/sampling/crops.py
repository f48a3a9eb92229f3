"""The RandomResizedCrop sampler: torchvision's ``RandomResizedCrop.get_params``, drawn from counters.

One sampler for CIDD's candidate boxes (:func:`nrrstore.distill.cidd.sample_boxes`) and for the
augmentation replay's views (:func:`nrrstore.replay.recipe.view_params_batch`), so both give the
same box for the same numbers, on every platform.

Semantics: up to `RRC_ATTEMPTS` attempts, each drawing an area fraction ~ U(scale) and a log
aspect ratio ~ U(log ratio); sides are ``rint(sqrt(area * aspect))`` and ``rint(sqrt(area /
aspect))`` (half to even, as Python's ``round``); the first attempt whose box fits wins and draws
its top and left offsets; when none fits, a centre crop clipped to the ratio range.

Counters: a crop is identified by three counter words ``(stream, word1, word2)`` and a first slot
``slot0``; attempt ``a`` draws at slots ``slot0 + 4a`` (area), ``+1`` (aspect), ``+2`` (top), ``+3``
(left), so one crop uses `SLOTS_PER_CROP` slots and a draw never depends on how many draws another
crop used. The logarithm and exponential of the aspect ratio are
:mod:`~nrrstore.sampling.exactmath`'s, not the platform libm's.

Versions (recorded by CIDD as ``method.cidd.crop_sampler``):
- 1: CIDD before nrrstore 0.2 drew the aspect with libm ``log``/``exp`` (the replay never did);
- 2: exact arithmetic (this module). For square crops (ratio (1, 1), CIDD's default and the only
  ratio its command line offers) the aspect is exactly 1 under both, so both versions draw the same
  boxes; other ratios may differ where a side rounds at a half pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nrrstore.sampling import rng
from nrrstore.sampling.exactmath import det_exp, det_log

SAMPLER_VERSION = 2
"""The crop sampler this nrrstore draws with (see the module docstring for version 1)."""
RRC_ATTEMPTS = 10
SLOTS_PER_CROP = 4 * RRC_ATTEMPTS

ArrayLike = int | np.ndarray | Sequence[int]


def random_resized_crop(
    seed: int,
    stream: int,
    word1: ArrayLike,
    word2: ArrayLike,
    slot0: ArrayLike,
    height: ArrayLike,
    width: ArrayLike,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(top, left, h, w)`` int64 arrays of the crops at counters ``(stream, word1, word2, slot0 + ...)``.

    ``word1``, ``word2``, ``slot0``, ``height`` and ``width`` broadcast to the output's shape; every
    counter word must lie in ``[0, 2**32)``. ``scale`` (area fraction) and ``ratio`` (width / height)
    are ``(low, high)`` pairs with ``0 < low <= high``.
    """
    w1, w2, s0, hh, ww = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64) for v in
                                               (word1, word2, slot0, height, width)))
    shape = w1.shape
    w1, w2, s0, hh, ww = (a.reshape(-1) for a in (w1, w2, s0, hh, ww))
    n = w1.size
    low_scale, high_scale = (float(v) for v in scale)
    log_low, log_high = (float(v) for v in det_log(np.array(ratio, dtype=np.float64)))
    top, left, ch, cw = (np.zeros(n, np.int64) for _ in range(4))
    done = np.zeros(n, np.bool_)
    area = hh.astype(np.float64) * ww.astype(np.float64)
    for a in range(RRC_ATTEMPTS):
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        counter = (stream, w1[rows], w2[rows])
        slot = s0[rows] + 4 * a
        target = area[rows] * (low_scale + (high_scale - low_scale) * rng.uniform_array(seed, *counter, slot))
        aspect = det_exp(log_low + (log_high - log_low) * rng.uniform_array(seed, *counter, slot + 1))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        ok = (w > 0) & (w <= ww[rows]) & (h > 0) & (h <= hh[rows])
        rows, slot = rows[ok], slot[ok]
        h, w = h[ok].astype(np.int64), w[ok].astype(np.int64)
        counter = (stream, w1[rows], w2[rows])
        top[rows] = rng.randint_array(seed, hh[rows] - h + 1, *counter, slot + 2)
        left[rows] = rng.randint_array(seed, ww[rows] - w + 1, *counter, slot + 3)
        ch[rows], cw[rows] = h, w
        done[rows] = True
    rows = np.flatnonzero(~done)
    if rows.size:  # torchvision's fallback: the whole image, clipped to the ratio range, centred
        h, w = hh[rows].copy(), ww[rows].copy()
        in_ratio = w.astype(np.float64) / h.astype(np.float64)
        tall, wide = in_ratio < ratio[0], in_ratio > ratio[1]
        h[tall] = np.maximum(np.rint(w[tall] / ratio[0]), 1).astype(np.int64)
        w[wide] = np.maximum(np.rint(h[wide] * ratio[1]), 1).astype(np.int64)
        ch[rows], cw[rows] = h, w
        top[rows] = (hh[rows] - h) // 2
        left[rows] = (ww[rows] - w) // 2
    return top.reshape(shape), left.reshape(shape), ch.reshape(shape), cw.reshape(shape)
