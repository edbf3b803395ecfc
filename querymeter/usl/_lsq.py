"""Bounded least squares for the USL: a projected Levenberg-Marquardt on the box [0, 1]^2.

The (sigma, kappa) coefficients are searched over the box with lam fixed or
profiled out (variable projection); the small dense linear algebra and the
closed-form linearised estimate used as a starting point live here too.  Only
the standard library is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_MAX_ITERATIONS = 500
# Relative gradient ("cosine") criterion of MINPACK: the residual vector is
# orthogonal to every free Jacobian column to this precision at convergence.
_GTOL = 1e-10
# Below this relative improvement of the sum of squares an iteration is taken
# as stalled: the objective is then flat to within rounding.
_FTOL = 1e-15


# --------------------------------------------------------------------------
# Small dense linear algebra
# --------------------------------------------------------------------------


def _solve_spd(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve A x = b for symmetric positive definite A (Cholesky); None if not SPD."""
    m = len(b)
    low = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(i + 1):
            s = a[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
            if i == j:
                if not (s > 0.0) or not math.isfinite(s):
                    return None
                low[i][i] = math.sqrt(s)
            else:
                low[i][j] = s / low[j][j]
    y = [0.0] * m
    for i in range(m):
        y[i] = (b[i] - sum(low[i][k] * y[k] for k in range(i))) / low[i][i]
    x = [0.0] * m
    for i in reversed(range(m)):
        x[i] = (y[i] - sum(low[k][i] * x[k] for k in range(i + 1, m))) / low[i][i]
    return x


def _inverse_diag_spd(a: list[list[float]]) -> list[float] | None:
    """Diagonal of the inverse of a symmetric positive definite matrix.

    The matrix is equilibrated first (unit diagonal): the columns of the USL
    Jacobian differ by many orders of magnitude (the kappa column grows like
    N**3), and equilibration keeps the factorisation accurate.  Returns None
    when the matrix is singular to working precision.
    """
    m = len(a)
    scale = []
    for i in range(m):
        if not (a[i][i] > 0.0) or not math.isfinite(a[i][i]):
            return None
        scale.append(1.0 / math.sqrt(a[i][i]))
    b = [[a[i][j] * scale[i] * scale[j] for j in range(m)] for i in range(m)]
    diag: list[float] = []
    for i in range(m):
        e = [1.0 if k == i else 0.0 for k in range(m)]
        col = _solve_spd(b, e)
        if col is None or not (col[i] > 0.0) or col[i] > 1e14:
            return None
        diag.append(col[i] * scale[i] * scale[i])
    return diag


# --------------------------------------------------------------------------
# The least-squares problem
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Eval:
    """Residuals and Jacobian (w.r.t. sigma, kappa) of the reduced problem."""

    lam: float
    resid: list[float]
    jac: list[list[float]]  # jac[j][i]: column j (0: sigma, 1: kappa), row i
    sse: float


class _Problem:
    """Least squares in (sigma, kappa) with lam fixed or profiled out.

    With lam free this is a separable problem: for given sigma and kappa the
    best lam is the linear least-squares coefficient of g = N / D on X, so the
    search runs over the box [0, 1]^2 only (variable projection, Golub and
    Pereyra 1973).  That keeps lam > 0 automatically (X > 0, g > 0), removes
    one badly scaled coordinate, and makes every trial point use its best lam.
    Throughputs are divided by ``scale`` so the residuals are of order 1.
    """

    def __init__(self, ns: list[float], xs: list[float], lam: float | None) -> None:
        self.ns = ns
        self.scale = max(xs)
        self.xs = [x / self.scale for x in xs]
        self.lam_given = lam
        self.lam_fixed = None if lam is None else lam / self.scale

    def _g(self, s: float, k: float) -> tuple[list[float], list[float], list[float]]:
        g: list[float] = []
        dgs: list[float] = []
        dgk: list[float] = []
        for n in self.ns:
            d = 1.0 + s * (n - 1.0) + k * n * (n - 1.0)
            g.append(n / d)
            q = n * (n - 1.0) / (d * d)
            dgs.append(-q)
            dgk.append(-q * n)
        return g, dgs, dgk

    def lam_at(self, s: float, k: float) -> float:
        if self.lam_fixed is not None:
            return self.lam_fixed
        g, _, _ = self._g(s, k)
        return sum(gi * xi for gi, xi in zip(g, self.xs, strict=True)) / sum(gi * gi for gi in g)

    def sse(self, s: float, k: float) -> float:
        lam = self.lam_at(s, k)
        total = 0.0
        for n, x in zip(self.ns, self.xs, strict=True):
            r = x - lam * n / (1.0 + s * (n - 1.0) + k * n * (n - 1.0))
            total += r * r
        return total

    def evaluate(self, s: float, k: float) -> _Eval:
        g, dgs, dgk = self._g(s, k)
        xs = self.xs
        if self.lam_fixed is not None:
            lam = self.lam_fixed
            resid = [x - lam * gi for x, gi in zip(xs, g, strict=True)]
            jac = [[-lam * v for v in dgs], [-lam * v for v in dgk]]
        else:
            gg = sum(gi * gi for gi in g)
            lam = sum(gi * xi for gi, xi in zip(g, xs, strict=True)) / gg
            resid = [x - lam * gi for x, gi in zip(xs, g, strict=True)]
            jac = []
            for dg in (dgs, dgk):
                # Exact Jacobian of the projected residual (I - P_g) X:
                # -(lam (I - P_g) dg + g (dg . r) / (g . g)).
                proj = sum(gi * di for gi, di in zip(g, dg, strict=True)) / gg
                dr = sum(di * ri for di, ri in zip(dg, resid, strict=True)) / gg
                jac.append(
                    [-(lam * (di - proj * gi) + gi * dr) for gi, di in zip(g, dg, strict=True)]
                )
        sse = sum(r * r for r in resid)
        return _Eval(lam, resid, jac, sse)

    def full_jacobian(self, s: float, k: float, lam: float) -> list[list[float]]:
        """Columns d f / d(sigma, kappa[, lam]) of the model f = lam N / D."""
        cols: list[list[float]] = [[], []]
        if self.lam_fixed is None:
            cols.append([])
        for n in self.ns:
            d = 1.0 + s * (n - 1.0) + k * n * (n - 1.0)
            q = lam * n * (n - 1.0) / (d * d)
            cols[0].append(-q)
            cols[1].append(-q * n)
            if self.lam_fixed is None:
                cols[2].append(n / d)
        return cols


@dataclass(slots=True)
class _Result:
    sigma: float
    kappa: float
    lam: float  # normalised by the problem's scale
    sse: float  # normalised
    iterations: int
    converged: bool


def _clip(v: float) -> float:
    return 0.0 if v < 0.0 else min(v, 1.0)


def _levenberg_marquardt(problem: _Problem, s0: float, k0: float) -> _Result:
    """Projected Levenberg-Marquardt on the box [0, 1]^2 with an active set.

    Each iteration: a bound variable whose gradient points out of the box is
    held (active set); an LM step with Marquardt's diagonal scaling is taken in
    the free variables and projected back onto the box; it is accepted only if
    the sum of squares decreases, with Nielsen's damping update.  For a large
    damping the projected step is a short scaled steepest-descent step, which
    always decreases the objective away from a stationary point, so the
    iteration cannot cycle; it is also capped at ``_MAX_ITERATIONS``.
    """
    s, k = _clip(s0), _clip(k0)
    ev = problem.evaluate(s, k)
    mu = 1e-3
    nu = 2.0
    x_norm2 = sum(x * x for x in problem.xs)
    converged = False
    iterations = 0
    stalls = 0
    while iterations < _MAX_ITERATIONS:
        iterations += 1
        if ev.sse <= (1e-15) ** 2 * x_norm2:
            converged = True  # exact fit to working precision
            break
        theta = (s, k)
        grad = [sum(c * r for c, r in zip(col, ev.resid, strict=True)) for col in ev.jac]
        colnorm2 = [sum(c * c for c in col) for col in ev.jac]
        rnorm = math.sqrt(ev.sse)
        free = []
        for j in range(2):
            if colnorm2[j] <= 0.0:
                continue  # the data carry no information on this coefficient here
            if theta[j] <= 0.0 and grad[j] > 0.0:
                continue  # the descent direction leaves the box at the lower bound
            if theta[j] >= 1.0 and grad[j] < 0.0:
                continue
            free.append(j)
        if not free or all(abs(grad[j]) <= _GTOL * math.sqrt(colnorm2[j]) * rnorm for j in free):
            converged = True
            break
        a = [
            [sum(p * q for p, q in zip(ev.jac[i], ev.jac[j], strict=True)) for j in free]
            for i in free
        ]
        b = [-grad[j] for j in free]
        accepted = False
        while mu < 1e30:
            damped = [row[:] for row in a]
            for i in range(len(free)):
                damped[i][i] += mu * a[i][i]
            step = _solve_spd(damped, b)
            if step is None:
                mu *= nu
                nu *= 2.0
                continue
            trial = list(theta)
            for i, j in enumerate(free):
                trial[j] = _clip(theta[j] + step[i])
            delta = [trial[j] - theta[j] for j in range(2)]
            if delta[0] == 0.0 and delta[1] == 0.0:
                break  # the step is below the resolution of the coefficients
            new = problem.evaluate(trial[0], trial[1])
            # Predicted decrease of the sum of squares for the (projected) step
            # under the linear model: -2 g.d - d'J'Jd.
            jd = [sum(ev.jac[j][i] * delta[j] for j in range(2)) for i in range(len(ev.resid))]
            predicted = -2.0 * sum(grad[j] * delta[j] for j in range(2)) - sum(v * v for v in jd)
            actual = ev.sse - new.sse
            if actual > 0.0 and math.isfinite(new.sse):
                rho = actual / predicted if predicted > 0.0 else 1.0
                mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
                s, k = trial
                stalls = stalls + 1 if actual <= _FTOL * ev.sse else 0
                ev = new
                accepted = True
                break
            mu *= nu
            nu *= 2.0
        if not accepted:
            # No decrease is possible along any damped step: stationary to
            # within rounding.
            converged = True
            break
        if stalls >= 3:
            converged = True
            break
    return _Result(s, k, ev.lam, ev.sse, iterations, converged)


def _linearized(
    ns: Sequence[float], xs: Sequence[float], lam: float | None
) -> tuple[float, float, float]:
    """Closed-form (sigma, kappa, lam) from the linear/quadratic transform."""
    if lam is not None:
        # Gunther's transform (GCaP 5.5): with C = X / lam,
        # N / C - 1 = sigma (N - 1) + kappa N (N - 1) = (sigma + kappa) x + kappa x^2
        # for x = N - 1: linear least squares through the origin.
        rows = [(n - 1.0, n * (n - 1.0)) for n in ns]
        ys = [n * lam / x - 1.0 for n, x in zip(ns, xs, strict=True)]
        a11 = sum(u * u for u, _ in rows)
        a12 = sum(u * v for u, v in rows)
        a22 = sum(v * v for _, v in rows)
        b1 = sum(u * y for (u, _), y in zip(rows, ys, strict=True))
        b2 = sum(v * y for (_, v), y in zip(rows, ys, strict=True))
        sol = _solve_spd([[a11, a12], [a12, a22]], [b1, b2])
        if sol is None:
            return 0.0, 0.0, lam
        return sol[0], sol[1], lam
    # lam free: R = N / X = (1 - sigma)/lam + (sigma - kappa)/lam N + kappa/lam N^2,
    # a quadratic polynomial in N fitted by linear least squares.  Powers of N
    # are scaled by the largest N to keep the normal equations well conditioned.
    nmax = max(ns)
    us = [n / nmax for n in ns]
    ys = [n / x for n, x in zip(ns, xs, strict=True)]
    ymax = max(ys)
    ys = [y / ymax for y in ys]
    basis = [[1.0, u, u * u] for u in us]
    mat = [[sum(r[i] * r[j] for r in basis) for j in range(3)] for i in range(3)]
    rhs = [sum(r[i] * y for r, y in zip(basis, ys, strict=True)) for i in range(3)]
    coef = _solve_spd(mat, rhs)
    if coef is None:
        return 0.0, 0.0, max(x / n for n, x in zip(ns, xs, strict=True))
    a = coef[0] * ymax
    b = coef[1] * ymax / nmax
    c = coef[2] * ymax / (nmax * nmax)
    inv_lam = a + b + c  # R(1) = 1 / lam
    if not (inv_lam > 0.0) or not math.isfinite(inv_lam):
        return 0.0, 0.0, max(x / n for n, x in zip(ns, xs, strict=True))
    lam_est = 1.0 / inv_lam
    return (b + c) * lam_est, c * lam_est, lam_est
