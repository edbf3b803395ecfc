"""Student's t distribution: the quantile used for the confidence intervals of a USL fit.

The regularised incomplete beta function is evaluated by its continued
fraction (modified Lentz); the quantile is found by bisection on the upper
tail.  Only the standard library is used.
"""

from __future__ import annotations

import math
import numbers
import sys

__all__ = ["t_quantile"]

_FLOAT_MAX = sys.float_info.max


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < tiny:
        d = tiny
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def _stirling_tail(z: float) -> float:
    """ln Gamma(z) - [(z - 1/2) ln z - z + ln(2 pi) / 2], asymptotic series for z >= 20."""
    z2 = z * z
    return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * z2)) / z2) / z2) / z


def _log_gamma_ratio(a: float, b: float) -> float:
    """ln Gamma(a + b) - ln Gamma(a), accurate also when a is large.

    math.lgamma(a + b) - math.lgamma(a) cancels catastrophically for large a
    (two numbers near a ln a whose difference is near b ln a), which limits
    the t quantile to about 1e-9 for a million degrees of freedom; Stirling's
    series gives the difference directly.
    """
    if a < 20.0:
        return math.lgamma(a + b) - math.lgamma(a)
    return (
        (a - 0.5) * math.log1p(b / a)
        + b * math.log(a + b)
        - b
        + (_stirling_tail(a + b) - _stirling_tail(a))
    )


def _betainc(a: float, b: float, lx: float, ly: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0.

    Takes ``lx = ln x`` and ``ly = ln(1 - x)``: callers compute both without
    cancellation, and ``a * ln x`` must be exact to a few ulps even when a is
    huge and x within 1e-9 of 1 (where x itself would carry too few digits).
    """
    # x or y may underflow to 0 here; the prefactor is kept in logs, so the
    # far tails stay right down to the smallest representable probability.
    x = math.exp(lx)
    y = math.exp(ly)
    log_front = _log_gamma_ratio(a, b) - math.lgamma(b) + a * lx + b * ly
    front = math.exp(log_front)
    # The continued fraction converges fast only for x < (a + 1) / (a + b + 2);
    # otherwise use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0 and Student's t with ``df`` degrees of freedom."""
    # P(|T| > t) = I_x(df/2, 1/2) with x = df / (df + t^2).  ln x and
    # ln(1 - x) are formed from the smaller of u = t^2/df and 1/u, in logs, so
    # that neither overflow (t up to 1e300) nor cancellation (x near 1) occurs.
    if t == 0.0:
        return 0.5
    root_df = math.sqrt(df)
    if t <= root_df:
        u = (t / root_df) ** 2
        lx = -math.log1p(u)
        ly = 2.0 * (math.log(t) - math.log(root_df)) - math.log1p(u)
    else:
        w = (root_df / t) ** 2
        lx = 2.0 * (math.log(root_df) - math.log(t)) - math.log1p(w)
        ly = -math.log1p(w)
    return 0.5 * _betainc(0.5 * df, 0.5, lx, ly)


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution: the t with P(T <= t) = p.

    ``p`` must be in (0, 1) and ``df`` (degrees of freedom) finite and > 0; it
    need not be an integer.  Bisection, down to adjacent floating-point
    numbers, on the tail probability computed from the regularised incomplete
    beta function, ``P(T > t) = I_{df/(df+t^2)}(df/2, 1/2) / 2``.  The relative
    error is below about 1e-12 for df up to 1e6 (about 1e-10 at 1e7, where
    the continued fraction needs more terms than it is allowed); a quantile
    beyond the largest float (tiny p with df < 1) is returned as an infinity.
    """
    if not (isinstance(p, numbers.Real) and 0.0 < p < 1.0):
        raise ValueError(f"p must be a probability in (0, 1), got {p!r}")
    if not (isinstance(df, numbers.Real) and math.isfinite(df) and df > 0):
        raise ValueError(f"df must be finite and > 0, got {df!r}")
    p = float(p)
    df = float(df)
    if p == 0.5:
        return 0.0
    # Work with the smaller tail probability for precision, then mirror.
    tail = p if p < 0.5 else 1.0 - p
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        if hi >= _FLOAT_MAX:
            # The quantile is beyond the largest float (tiny p, df < 1).
            return math.inf if p > 0.5 else -math.inf
        lo, hi = hi, min(hi * 2.0, _FLOAT_MAX)
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t
