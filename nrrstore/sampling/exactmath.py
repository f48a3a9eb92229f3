"""Natural log and exp that give the same bits on every platform, numpy and Python version.

Why: the platform libm may round its last bit differently between systems, and a draw that decides
a crop box by rounding ``sqrt(area * aspect)`` must not. Only IEEE-754 basic operations (+ - * /,
which are correctly rounded everywhere) and exact operations (frexp, ldexp, rint) are used.
"""

from __future__ import annotations

import math

import numpy as np

_LN2_HI = 6.93147180369123816490e-01  # fdlibm split of ln 2: k * _LN2_HI is exact for |k| < 2**20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_SQRT_HALF = 0.70710678118654757
_LOG_COEF = tuple(1.0 / (2 * k + 1) for k in range(12, -1, -1))  # 1/25, ..., 1/3, 1
_EXP_COEF = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))  # 1/13!, ..., 1, 1


def det_log(x: np.ndarray | float) -> np.ndarray:
    """Natural log of positive finite x, to ~1e-16 relative, identical on every platform.

    x = m * 2**e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1), by its
    odd series to s**25 (|s| < 0.172, so the truncation is below 1e-19).
    """
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    ef = (e - low.astype(e.dtype)).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = np.full_like(z, _LOG_COEF[0])
    for c in _LOG_COEF[1:]:
        p = p * z + c
    return ef * _LN2_HI + (2.0 * s * p + ef * _LN2_LO)


def det_exp(x: np.ndarray | float) -> np.ndarray:
    """exp(x) to ~1e-16 relative, identical on every platform (underflows to 0 below -1100).

    x = k ln2 + r with |r| <= ln2/2; exp r by its Taylor series to r**13; then an exact ldexp.
    """
    x = np.clip(np.asarray(x, dtype=np.float64), -1100.0, 709.0)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_COEF[0])
    for c in _EXP_COEF[1:]:
        p = p * r + c
    return np.ldexp(p, k.astype(np.int32))
