"""querymeter.usl._lsq: the bounded solver reaches the optimum of an independent one (scipy)."""

from __future__ import annotations

from typing import Any

import pytest

from querymeter.usl import fit

from .data import load

DATASETS = [
    "specsdm91.csv",
    "specsdm91_rounded.csv",
    "cisco.csv",
    "raytracer.csv",
    "usl_r_synthetic.csv",
]


def scipy_fit(points: list[tuple[float, float]], lam: float | None) -> tuple[list[float], float]:
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    n = np.array([p[0] for p in points])
    x = np.array([p[1] for p in points])

    def curve(s: float, k: float, lam_: float) -> Any:
        return lam_ * n / (1 + s * (n - 1) + k * n * (n - 1))

    def jac3(p: list[float]) -> Any:
        s, k, lam_ = p
        d = 1 + s * (n - 1) + k * n * (n - 1)
        return np.c_[lam_ * n * (n - 1) / d**2, lam_ * n * n * (n - 1) / d**2, -n / d]

    best = None
    for s0, k0 in ((0.01, 1e-4), (0.1, 1e-3), (0.0, 0.0)):
        if lam is None:
            res = optimize.least_squares(
                lambda p: x - curve(*p), [s0, k0, float(np.max(x / n))], jac=jac3,
                bounds=([0, 0, 0], [1, 1, np.inf]), x_scale="jac",
                xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10_000,
            )  # fmt: skip
        else:
            res = optimize.least_squares(
                lambda p: x - curve(p[0], p[1], lam), [s0, k0],
                jac=lambda p: jac3([p[0], p[1], lam])[:, :2],
                bounds=([0, 0], [1, 1]), x_scale="jac",
                xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10_000,
            )  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return [float(v) for v in best.x], 2 * float(best.cost)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("fixed", [False, True], ids=["lam-free", "lam-fixed"])
def test_scipy_oracle_agrees(name: str, fixed: bool) -> None:
    """scipy's bounded least_squares finds the same coefficients and sum of squares."""
    pts = load(name)
    lam = pts[0][1] if fixed else None
    m = fit(pts, lam=lam)
    coef, sse = scipy_fit(pts, lam)
    assert m.sse == pytest.approx(sse, rel=1e-9, abs=1e-20)
    assert m.sigma == pytest.approx(coef[0], rel=1e-6, abs=1e-12)
    assert m.kappa == pytest.approx(coef[1], rel=1e-6, abs=1e-12)
    if not fixed:
        assert m.lam == pytest.approx(coef[2], rel=1e-6)
    assert m.converged
