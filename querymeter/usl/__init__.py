"""Universal Scalability Law: fit a model to (concurrency, throughput) points and use it.

The Universal Scalability Law (USL, Neil J. Gunther, *Guerrilla Capacity
Planning*, 2007) models the throughput ``X`` of a system at concurrency ``N``::

    X(N) = lam * N / (1 + sigma * (N - 1) + kappa * N * (N - 1))

Units used throughout this module:

* concurrency ``N``: dimensionless (mean number of queries in flight; it need
  not be an integer, Little's Law gives fractional values);
* throughput ``X``: queries per second (queries/s);
* response time ``R``: seconds, from Little's Law ``R(N) = N / X(N)``;
* ``lam``: queries/s, the throughput at ``N = 1`` without any overhead;
* ``sigma`` (contention) and ``kappa`` (coherency): dimensionless, in [0, 1].

Any consistent units work (e.g. requests per hour); the statements above only
fix the names used in the docstrings.

Public API:

* :func:`fit` -- bounded nonlinear least squares fit of ``sigma``, ``kappa``
  and (unless it is fixed) ``lam`` to measured points.
* :class:`Model` -- the fitted coefficients, goodness of fit, standard errors,
  confidence intervals, and the derived quantities (peak concurrency, maximum
  throughput, response time and the exact inverses of the model).
* :func:`linearized_estimate` -- the closed-form estimate from the linear /
  quadratic transform of the data (used as a starting point of the fit).
* :func:`t_quantile` -- quantile of Student's t distribution (used for the
  confidence intervals).
* :func:`read_fit` -- whether a model describes the points it was fitted
  to, and what it means, in plain sentences (a :class:`FitReading`).

The numerics live in private modules: :mod:`querymeter.usl._lsq` (the
bounded Levenberg-Marquardt solver) and :mod:`querymeter.usl._tdist`
(Student's t distribution).

Only the standard library is used at run time.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._lsq import _clip, _inverse_diag_spd, _levenberg_marquardt, _linearized, _Problem, _Result
from ._reading import FitReading, read_fit
from ._tdist import t_quantile

__all__ = ["FitReading", "Model", "fit", "linearized_estimate", "read_fit", "t_quantile"]

LimitingFactor = Literal["contention", "coherency", "none"]

#: Minimum number of points for a fit with ``lam`` fitted freely (3 coefficients).
MIN_POINTS_FREE = 3
#: Minimum number of points for a fit with ``lam`` fixed (2 coefficients).
MIN_POINTS_FIXED = 2
#: Largest accepted concurrency.  Larger values are certainly input errors, and
#: the Jacobian (which grows like N**3) must stay far from overflow.
MAX_CONCURRENCY = 1e15

# Local searches started from the best-scoring candidate points (multi-start:
# badly scattered data can have more than one local minimum in the box).
_N_STARTS = 4
_EPS = sys.float_info.epsilon


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _coerce_points(points: Iterable[object]) -> tuple[list[float], list[float]]:
    """Return (N, X) lists from pairs or Interval-like objects, validated."""
    if isinstance(points, (str, bytes)):
        raise TypeError("points must be an iterable of (N, X) pairs, not a string")
    try:
        items = list(points)
    except TypeError:
        raise TypeError(
            f"points must be an iterable of (N, X) pairs, got {type(points).__name__}"
        ) from None
    ns: list[float] = []
    xs: list[float] = []
    for i, item in enumerate(items):
        if hasattr(item, "concurrency") and hasattr(item, "throughput"):
            raw_n = item.concurrency
            raw_x = item.throughput
            if raw_n is None:
                raise ValueError(f"point {i}: concurrency is None (undefined for this interval)")
            if raw_x is None:
                raise ValueError(f"point {i}: throughput is None (undefined for this interval)")
        else:
            if isinstance(item, (str, bytes)) or not hasattr(item, "__len__"):
                raise TypeError(
                    f"point {i}: expected an (N, X) pair or an object with "
                    f".concurrency and .throughput, got {type(item).__name__} {item!r}"
                )
            size = len(item)
            if size != 2:
                raise ValueError(
                    f"point {i}: expected an (N, X) pair of 2 numbers, got {size} items"
                )
            raw_n, raw_x = item  # type: ignore[misc]
        n = _real(raw_n, f"point {i}: concurrency N")
        x = _real(raw_x, f"point {i}: throughput X")
        if not math.isfinite(n) or n <= 0.0:
            raise ValueError(f"point {i}: concurrency N must be finite and > 0, got {n!r}")
        if n > MAX_CONCURRENCY:
            raise ValueError(
                f"point {i}: concurrency N = {n!r} exceeds {MAX_CONCURRENCY:g}; "
                "this is not a plausible concurrency"
            )
        if not math.isfinite(x) or x <= 0.0:
            raise ValueError(f"point {i}: throughput X must be finite and > 0, got {x!r}")
        ns.append(n)
        xs.append(x)
    return ns, xs


def _check_lam(lam: object) -> float:
    value = _real(lam, "lam")
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"lam must be finite and > 0, got {value!r}")
    return value


def _check_enough(ns: Sequence[float], lam_fixed: bool) -> None:
    n = len(ns)
    if lam_fixed:
        if n < MIN_POINTS_FIXED:
            raise ValueError(
                f"too few points: {n} given, at least {MIN_POINTS_FIXED} are needed with lam fixed"
            )
        # At N = 1 the model is lam whatever sigma and kappa are, so such points
        # say nothing about them; two other distinct N pin both down.
        distinct = {v for v in ns if v != 1.0}
        if len(distinct) < 2:
            raise ValueError(
                "too few distinct concurrencies: with lam fixed at least 2 distinct "
                f"N values other than N = 1 are needed, got {sorted(distinct)}"
            )
    else:
        if n < MIN_POINTS_FREE:
            raise ValueError(
                f"too few points: {n} given, at least {MIN_POINTS_FREE} are needed "
                "with lam fitted (pass lam=... to fix it and fit from 2 points)"
            )
        distinct = set(ns)
        if len(distinct) < 3:
            raise ValueError(
                "too few distinct concurrencies: with lam fitted at least 3 distinct "
                f"N values are needed, got {sorted(distinct)}"
            )


# --------------------------------------------------------------------------
# Linearised estimate
# --------------------------------------------------------------------------


def linearized_estimate(
    points: Iterable[object], *, lam: float | None = None
) -> tuple[float, float, float]:
    """Closed-form ``(sigma, kappa, lam)`` from a linear transform of the data.

    With ``lam`` fixed this is the method of Gunther (*Guerrilla Capacity
    Planning*, section 5.5), also the default method of the R package ``usl``
    before 2.0: with the relative capacity ``C = X / lam`` and ``x = N - 1``,
    ``N / C - 1 = (sigma + kappa) x + kappa x**2`` is fitted by linear least
    squares through the origin.  With ``lam`` free, the response-time form
    ``N / X = (1 - sigma)/lam + (sigma - kappa)/lam * N + kappa/lam * N**2`` is
    fitted as a quadratic in ``N``.

    The coefficients are returned as computed (not clipped to [0, 1]); they
    minimise a transformed error, not the squared throughput error, and are
    the first of the starting points :func:`fit` tries.  Same validation as
    :func:`fit`.
    """
    lam_value = None if lam is None else _check_lam(lam)
    ns, xs = _coerce_points(points)
    _check_enough(ns, lam_value is not None)
    return _linearized(ns, xs, lam_value)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

_PARAMS = ("sigma", "kappa", "lam")


@dataclass(frozen=True, slots=True)
class Model:
    """A Universal Scalability Law model ``X(N) = lam N / (1 + sigma (N-1) + kappa N (N-1))``.

    Coefficients:

    * ``sigma``: contention (serialisation), dimensionless, in [0, 1];
    * ``kappa``: coherency (crosstalk), dimensionless, in [0, 1];
    * ``lam``: throughput at ``N = 1`` without overhead, queries/s, > 0.

    A model can be built directly (``Model(sigma=0.02, kappa=1e-4, lam=90.0)``)
    for what-if analysis; :func:`fit` also fills in the statistics, which are
    ``None`` when not applicable:

    * ``lam_fixed``: ``lam`` was given, not fitted.
    * ``n_points``: number of points fitted; ``df_residual`` = ``n_points`` -
      number of fitted coefficients (3, or 2 with ``lam`` fixed).  As in R's
      ``nls`` and the ``usl`` package, a coefficient that ends at a bound still
      counts as fitted.
    * ``sse``: sum of squared throughput residuals, (queries/s)**2.
    * ``r_squared``: ``1 - sse / sum((X - mean X)**2)``; ``None`` when all X
      are equal (no variance to explain).
    * ``residual_standard_error``: ``sqrt(sse / df_residual)``, queries/s;
      ``None`` when ``df_residual`` is 0.
    * ``sigma_se``, ``kappa_se``, ``lam_se``: standard errors from the
      Jacobian ``J`` of the fitted curve at the solution,
      ``sqrt(diag((J'J)^-1)) * residual_standard_error``, the formula of R's
      ``nls`` summary and of the ``usl`` package.  A coefficient that ends at a
      bound of [0, 1] still gets its standard error from the full Jacobian
      (again as R does); it describes the curvature there, and its name is
      listed in ``at_bound`` as a warning that the usual normal theory does
      not hold.  A fixed ``lam`` has ``lam_se = None``.  All are ``None`` when
      ``df_residual`` is 0 or ``J'J`` is singular.
    * ``sigma_ci``, ``kappa_ci``, ``lam_ci``: 95% confidence intervals
      ``estimate -+ t(0.975, df_residual) * se`` (see
      :meth:`confidence_interval`), clipped to the coefficient's domain.
    * ``at_bound``: names of the coefficients that ended at a bound.
    * ``iterations``, ``converged``: diagnostics of the optimiser.
    """

    sigma: float
    kappa: float
    lam: float
    lam_fixed: bool = False
    n_points: int = 0
    df_residual: int = 0
    sse: float | None = None
    r_squared: float | None = None
    residual_standard_error: float | None = None
    sigma_se: float | None = None
    kappa_se: float | None = None
    lam_se: float | None = None
    at_bound: tuple[str, ...] = ()
    iterations: int = 0
    converged: bool = True
    sigma_ci: tuple[float, float] | None = field(init=False, default=None)
    kappa_ci: tuple[float, float] | None = field(init=False, default=None)
    lam_ci: tuple[float, float] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for name in ("sigma", "kappa"):
            v = _real(getattr(self, name), name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        lam = _real(self.lam, "lam")
        if not math.isfinite(lam) or lam <= 0.0:
            raise ValueError(f"lam must be finite and > 0, got {lam!r}")
        for name in _PARAMS:
            object.__setattr__(self, f"{name}_ci", self.confidence_interval(name))

    # -- derived quantities -------------------------------------------------

    @property
    def peak_concurrency(self) -> float:
        """Concurrency of maximum throughput, ``N* = sqrt((1 - sigma) / kappa)``.

        ``math.inf`` when ``kappa == 0`` (throughput never decreases).  Note that
        ``N*`` is 0 when ``sigma == 1`` and can be below 1 when
        ``kappa > 1 - sigma``: such systems do not scale at all.
        """
        if self.kappa == 0.0:
            return math.inf
        # Two square roots: (1 - sigma) / kappa overflows for subnormal kappa.
        return math.sqrt(1.0 - self.sigma) / math.sqrt(self.kappa)

    @property
    def max_throughput(self) -> float:
        """Largest throughput the model reaches (its supremum over N > 0), queries/s.

        Substituting ``kappa N*^2 = 1 - sigma`` into ``X(N*)`` gives

            ``X* = lam / (sigma - kappa + 2 sqrt(kappa (1 - sigma)))``

        which also covers the limits: ``lam / sigma`` (the Amdahl asymptote,
        approached as ``N -> inf``) when ``kappa == 0``; ``lam / (1 - kappa)``
        (approached as ``N -> 0``) when ``sigma == 1``; ``math.inf`` when
        ``sigma == kappa == 0`` (linear scaling) or ``sigma == kappa == 1``.
        The form needs no ``N*``, which overflows for tiny ``kappa``.
        """
        s, k = self.sigma, self.kappa
        denom = s - k + 2.0 * math.sqrt(k * (1.0 - s))
        return math.inf if denom <= 0.0 else self.lam / denom

    @property
    def limiting_factor(self) -> LimitingFactor:
        """What limits scalability: ``"contention"``, ``"coherency"`` or ``"none"``.

        The rule compares the two overhead terms of the denominator,
        ``sigma (N - 1)`` and ``kappa N (N - 1)``, at the peak ``N*``, where a
        capacity planner meets the ceiling; their ratio there is
        ``sigma : kappa N*``.  So the answer is ``"contention"`` when
        ``sigma >= kappa * N*`` (equivalently ``sigma**2 >= kappa (1 - sigma)``),
        else ``"coherency"``.  With ``kappa == 0`` this gives ``"contention"``
        (Amdahl's law: a ceiling of ``lam / sigma``) unless ``sigma == 0`` too,
        which is linear scaling: ``"none"``.
        """
        s, k = self.sigma, self.kappa
        if s == 0.0 and k == 0.0:
            return "none"
        if k == 0.0:
            return "contention"
        return "contention" if s * s >= k * (1.0 - s) else "coherency"

    # -- evaluation ---------------------------------------------------------

    @staticmethod
    def _check_positive(value: float, what: str) -> float:
        v = _real(value, what)
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(f"{what} must be finite and > 0, got {v!r}")
        return v

    def throughput(self, n: float) -> float:
        """Throughput ``X(n) = lam n / (1 + sigma (n - 1) + kappa n (n - 1))``, queries/s.

        ``n`` (concurrency, dimensionless) must be finite and > 0.
        """
        n = self._check_positive(n, "concurrency n")
        return self.lam * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))

    def response_time(self, n: float) -> float:
        """Mean response time ``R(n) = n / X(n) = (1 + sigma (n-1) + kappa n (n-1)) / lam``, s.

        Little's Law; ``n`` must be finite and > 0.
        """
        n = self._check_positive(n, "concurrency n")
        return (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0)) / self.lam

    def concurrency_at_throughput(self, x: float) -> float:
        """Concurrency at which the model's throughput equals ``x`` (queries/s).

        ``X(N) = x`` is the quadratic
        ``x kappa N**2 + (x (sigma - kappa) - lam) N + x (1 - sigma) = 0``.
        Throughput rises on ``(0, N*]`` and falls after the peak, so there can
        be two roots; the smaller one, on the rising branch, is returned (the
        concurrency a system needs to reach ``x``).  It is below 1 for
        ``x < X(1) = lam``.

        A concurrency beyond the float range (e.g. ``sigma`` ~ 1e-308) is
        returned as ``math.inf``.

        Raises ``ValueError`` if ``x`` is not finite and > 0, if ``x`` is above
        :attr:`max_throughput` (unreachable), or if ``sigma == 1`` (the model
        has no rising branch: throughput only falls with N).
        """
        x = self._check_positive(x, "throughput x")
        s, k, lam = self.sigma, self.kappa, self.lam
        if s == 1.0:
            raise ValueError("the model has no rising branch (sigma == 1): throughput only falls")
        xmax = self.max_throughput
        # X(N*) evaluated directly can exceed the closed form by a few ulps.
        if x > xmax * (1.0 + 16.0 * _EPS):
            raise ValueError(
                f"throughput {x!r} is above the model's maximum throughput {xmax!r}; "
                "no concurrency reaches it"
            )
        # Divided by lam, with y = x / lam: a = y kappa, -b = 1 - y (sigma - kappa),
        # c = y (1 - sigma).  The discriminant b^2 - 4ac is formed as the
        # product (-b - 2 sqrt(ac)) (-b + 2 sqrt(ac)): no squares to overflow,
        # and its first factor is exactly 1 - x / max_throughput, so it does
        # not cancel near the peak.
        y = x / lam
        q = math.sqrt(k * (1.0 - s))
        if k == 0.0 and s > 0.0:
            # Amdahl: -b = 1 - x / max_throughput exactly; formed as a
            # difference of near-equal numbers (exact), it stays positive up
            # to the asymptote, where 1 - y s would round to zero.
            minus_b = (xmax - x) / xmax
            f1 = max(minus_b, 0.0)
        else:
            minus_b = 1.0 - y * (s - k)
            f1 = max(1.0 - y * (s - k + 2.0 * q), 0.0)  # >= 0 up to rounding for x <= X*
        f2 = 1.0 - y * (s - k - 2.0 * q)
        # Smaller root in the form 2c / (-b + sqrt(disc)), which does not
        # cancel: -b > 0 on the rising branch.
        denom = minus_b + math.sqrt(f1) * math.sqrt(f2)
        if not denom > 0.0:
            raise ValueError(f"throughput {x!r} is not reached on the rising branch of the model")
        return 2.0 * y * (1.0 - s) / denom

    def concurrency_at_response_time(self, r: float) -> float:
        """Concurrency at which the mean response time equals ``r`` (seconds).

        ``R(N) = r`` is the quadratic
        ``kappa N**2 + (sigma - kappa) N + (1 - sigma - lam r) = 0``; its
        positive root is returned.  ``R`` is increasing for ``N >= 1``, so this
        is also the largest concurrency that keeps the response time at or
        below ``r`` (the capacity-planning question).

        ``r`` must be at least ``R(1) = 1 / lam``, the response time of a single
        query: the model's ``R(N)`` below ``N = 1`` is an extrapolation (its
        ``N - 1`` terms turn negative), not a faster system, so smaller ``r``
        raises ``ValueError``.  When ``sigma == kappa == 0`` the response time
        is ``1 / lam`` at every concurrency and ``math.inf`` is returned (as
        for an answer beyond the float range).
        """
        r = self._check_positive(r, "response time r")
        s, k, lam = self.sigma, self.kappa, self.lam
        excess = lam * r - 1.0
        if excess < -4.0 * _EPS:
            raise ValueError(
                f"response time {r!r} s is below R(1) = 1/lam = {1.0 / lam!r} s, "
                "the response time of a single query; no concurrency achieves it"
            )
        if s == 0.0 and k == 0.0:
            return math.inf
        # R(N) - R(1) = (N - 1)(sigma + kappa N) / lam, so M = N - 1 solves
        # kappa M^2 + (sigma + kappa) M - (lam r - 1) = 0.  All terms of the
        # root below are >= 0: no cancellation, also for tiny sigma, kappa.
        if not math.isfinite(excess):
            return math.inf
        d = max(excess, 0.0)
        b = s + k
        # sqrt(b^2 + 4 kappa d) as a hypot, which cannot overflow.
        m = 2.0 * d / (b + math.hypot(b, 2.0 * math.sqrt(k) * math.sqrt(d)))
        return 1.0 + m

    # -- statistics ---------------------------------------------------------

    def confidence_interval(self, name: str, level: float = 0.95) -> tuple[float, float] | None:
        """Two-sided confidence interval for the coefficient ``name``.

        ``name`` is ``"sigma"``, ``"kappa"`` or ``"lam"``; the interval is
        ``estimate -+ t((1 + level) / 2, df_residual) * standard_error``, as
        R's ``confint`` for ``usl`` models, then clipped to the coefficient's
        domain ([0, 1] for sigma and kappa, [0, inf) for lam).  ``None`` when
        there is no standard error (fixed ``lam``, ``df_residual`` 0, or a
        model built without a fit).
        """
        if name not in _PARAMS:
            raise ValueError(f"unknown coefficient {name!r}; expected one of {_PARAMS}")
        if not (isinstance(level, numbers.Real) and 0.0 < level < 1.0):
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        se: float | None = getattr(self, f"{name}_se")
        if se is None or self.df_residual < 1:
            return None
        est: float = getattr(self, name)
        half = t_quantile(0.5 + 0.5 * float(level), self.df_residual) * se
        lo, hi = est - half, est + half
        lo = max(lo, 0.0)
        if name != "lam":
            hi = min(hi, 1.0)
        return lo, hi


# --------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------


def _start_candidates(
    ns: Sequence[float], lin: tuple[float, float, float]
) -> list[tuple[float, float]]:
    nref = max(max(ns), 1.0)
    out = [(_clip(lin[0]), _clip(lin[1]))]
    sigmas = (0.0, 1e-3, 1e-2, 0.05, 0.2, 0.5, 1.0)
    # kappa matters through kappa N^2, so its grid is scaled by the largest N.
    kappas = [0.0] + [
        _clip(c / (nref * nref)) for c in (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
    ]
    for s in sigmas:
        for k in kappas:
            out.append((s, k))
    return out


def _pick_starts(ranked: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Starting points from candidates ranked by sum of squares (best first).

    The best few overall, plus the best on the faces sigma = 0 and kappa = 0
    and the best interior point: with scattered data the local minima tend to
    sit on different faces of the box (one explains the flattening by
    contention, another by coherency), and the overall ranking alone can keep
    every start in one basin.
    """
    starts: list[tuple[float, float]] = []

    def add(point: tuple[float, float]) -> None:
        if point not in starts:
            starts.append(point)

    for point in ranked[:_N_STARTS]:
        add(point)

    def region(point: tuple[float, float]) -> str:
        if point[0] == 0.0:
            return "sigma=0"
        if point[1] == 0.0:
            return "kappa=0"
        return "interior"

    for wanted in ("sigma=0", "kappa=0", "interior"):
        for point in ranked:
            if region(point) == wanted:
                add(point)
                break
    return starts


def fit(points: Iterable[object], *, lam: float | None = None) -> Model:
    """Fit a USL model to measured (concurrency, throughput) points.

    ``points`` is an iterable whose items are either ``(N, X)`` pairs (any
    2-sequence of real numbers) or objects with attributes ``.concurrency``
    and ``.throughput`` (such as querymeter's intervals).  ``N`` (concurrency,
    dimensionless) and ``X`` (throughput, queries/s) must be finite and > 0;
    ``N`` need not be an integer and at most ``MAX_CONCURRENCY``.

    ``lam``: if given, lambda is fixed at that value (Gunther's method in
    *Guerrilla Capacity Planning* fixes it at the measured ``X(1)``) and only
    sigma and kappa are fitted; if ``None`` (default) lambda is fitted too, as
    the R package ``usl`` >= 2.0 and codahale/usl do.

    Minimum data: with ``lam`` fitted, 3 points with 3 distinct ``N``; with
    ``lam`` fixed, 2 points with 2 distinct ``N`` other than 1 (at ``N = 1``
    the model equals ``lam`` whatever sigma and kappa are).

    The fit minimises ``sum((X_i - X(N_i))**2)`` subject to ``0 <= sigma <= 1``,
    ``0 <= kappa <= 1``, ``lam > 0``: lambda is profiled out (variable
    projection) and a projected Levenberg-Marquardt with an active set runs
    over the box in (sigma, kappa).  Candidate starting points are the
    :func:`linearized_estimate` (clipped to the box) and a grid (kappa scaled
    by the largest N); the search starts from the best few of them by sum of
    squares, and from the best on each face sigma = 0, kappa = 0 and in the
    interior, and the lowest sum of squares wins.  Each search decreases the
    sum of squares monotonically, so the result is never worse than any
    starting point.  Iterations are bounded; ``Model.converged`` reports
    whether the stopping test was met.

    Raises ``ValueError`` (bad values, too few points) or ``TypeError``
    (items that are neither pairs nor interval-like) with a message naming
    the offending point.
    """
    lam_value = None if lam is None else _check_lam(lam)
    ns, xs = _coerce_points(points)
    _check_enough(ns, lam_value is not None)
    problem = _Problem(ns, xs, lam_value)

    lin = _linearized(ns, xs, lam_value)
    candidates = _start_candidates(ns, lin)
    scored = sorted(
        ((problem.sse(s, k), i, s, k) for i, (s, k) in enumerate(candidates)),
        key=lambda t: (t[0], t[1]),
    )
    starts = _pick_starts([(s, k) for _, _, s, k in scored])
    best: _Result | None = None
    for s0, k0 in starts:
        res = _levenberg_marquardt(problem, s0, k0)
        if best is None or res.sse < best.sse:
            best = res
    assert best is not None
    return _build_model(problem, best, ns, xs)


def _build_model(problem: _Problem, res: _Result, ns: list[float], xs: list[float]) -> Model:
    scale = problem.scale
    lam_fixed = problem.lam_fixed is not None
    n_points = len(ns)
    n_coef = 2 if lam_fixed else 3
    df = n_points - n_coef
    s, k, lam_n = res.sigma, res.kappa, res.lam

    sse_n = problem.sse(s, k)
    mean = sum(problem.xs) / n_points
    sst_n = sum((x - mean) ** 2 for x in problem.xs)
    r_squared = None if sst_n <= 0.0 else 1.0 - sse_n / sst_n
    rse_n = math.sqrt(sse_n / df) if df > 0 else None

    ses: list[float | None] = [None, None, None]
    if rse_n is not None:
        cols = problem.full_jacobian(s, k, lam_n)
        jtj = [[sum(p * q for p, q in zip(ci, cj, strict=True)) for cj in cols] for ci in cols]
        diag = _inverse_diag_spd(jtj)
        if diag is not None:
            for j, v in enumerate(diag):
                ses[j] = math.sqrt(v) * rse_n
    lam_se = ses[2] * scale if ses[2] is not None else None

    at_bound = tuple(name for name, v in (("sigma", s), ("kappa", k)) if v in (0.0, 1.0))
    # A fixed lam is reported exactly as given, not as lam / scale * scale.
    lam_out = problem.lam_given if problem.lam_given is not None else lam_n * scale
    return Model(
        sigma=s,
        kappa=k,
        lam=lam_out,
        lam_fixed=lam_fixed,
        n_points=n_points,
        df_residual=df,
        sse=sse_n * scale * scale,
        r_squared=r_squared,
        residual_standard_error=None if rse_n is None else rse_n * scale,
        sigma_se=ses[0],
        kappa_se=ses[1],
        lam_se=lam_se,
        at_bound=at_bound,
        iterations=res.iterations,
        converged=res.converged,
    )
