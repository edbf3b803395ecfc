"""The Universal Scalability Law read in words: does a model describe the points, what it means.

:func:`read_fit` says whether a fitted :class:`~querymeter.usl.Model`
describes the measured (N, X) points, what it means if it does, and what to
measure next.  It is a pure function of the model and the points; the
report (every format) and :mod:`querymeter.scaling` say what it says.  The
advice names the options to change as the caller spells them: the demo's
command-line flags (``--levels``), or :func:`querymeter.scaling.run`'s
keyword arguments (``levels=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


class _Fitted(Protocol):
    """What :func:`read_fit` reads of a :class:`~querymeter.usl.Model`.

    A protocol, not the class: the package imports this module, so importing
    the package here would be a cycle.
    """

    @property
    def sigma(self) -> float: ...
    @property
    def kappa(self) -> float: ...
    @property
    def n_points(self) -> int: ...
    @property
    def converged(self) -> bool: ...
    @property
    def r_squared(self) -> float | None: ...
    @property
    def max_throughput(self) -> float: ...
    @property
    def peak_concurrency(self) -> float: ...
    @property
    def limiting_factor(self) -> str: ...


#: How the advice spells the options to change: the demo's command-line
#: flags, or the keyword arguments of :func:`querymeter.scaling.run`.
Options = Literal["cli", "python"]

#: Below this R², the model is said not to describe the data.  The published
#: data sets in tests/data/usl all fit with R² >= 0.99.
POOR_R_SQUARED = 0.9
#: Below this R² (and at or above POOR_R_SQUARED), the model is only a rough one.
ROUGH_R_SQUARED = 0.97
#: A measured throughput this much above the model's maximum: the curve misses the data.
ABOVE_MAX_TOLERANCE = 0.05
#: Throughput that grew less than this over the levels did not really grow.
FLAT_GROWTH = 1.25
#: A peak this many times beyond the largest measured concurrency is an extrapolation.
FAR_PEAK = 1.5


@dataclass(frozen=True)
class FitReading:
    """What a USL model says about the measurements, in plain sentences.

    ``describes_data`` is False when the model should not be used for
    predictions; ``problems`` says why, ``cautions`` qualify a model that
    does describe the data, ``advice`` says what to measure next, and
    ``summary`` says in one or two sentences what the fit means.
    """

    describes_data: bool
    summary: str
    problems: tuple[str, ...] = ()
    cautions: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()


def qps(value: float) -> str:
    return f"{value:,.0f} queries/s" if value >= 100 else f"{value:.3g} queries/s"


_SPELLING = {
    "cli": {
        "finer": "--levels 1,2,3,4,6,8,12,16",
        "longer": "--duration 10",
        "low": "--levels 1,2,3,4",
        "workers": "threads",
    },
    "python": {
        "finer": "levels=(1, 2, 3, 4, 6, 8, 12, 16)",
        "longer": "duration=10",
        "low": "levels=(1, 2, 3, 4)",
        "workers": "workers",
    },
}


def read_fit(
    model: _Fitted | None,
    points: Sequence[tuple[float, float]],
    *,
    cores: int | None = None,
    fit_problem: str | None = None,
    options: Options = "cli",
) -> FitReading:
    """Read a model against the (N, X) points it was fitted to.

    The model does not describe the data when R² is below ``POOR_R_SQUARED``,
    when sigma or kappa ended at their bound 1, when a measured throughput
    is above the model's maximum, when throughput did not grow with
    concurrency, when the fit did not converge, or when there were only as
    many points as coefficients.  ``cores`` (the machine's CPU count, when
    known) makes the advice concrete; ``fit_problem`` is why there is no
    model when ``model`` is None; ``options`` says how the advice spells the
    options to change (``"cli"``: ``--levels 1,2,4``; ``"python"``:
    ``levels=(1, 2, 4)``).
    """
    if options not in _SPELLING:
        raise ValueError(f'options must be "cli" or "python", not {options!r}')
    spelling = _SPELLING[options]
    more_levels = f"more levels in finer steps ({spelling['finer']}) show the curve's shape"
    longer = f"longer levels ({spelling['longer']}) average out the noise of each point"
    if model is None:
        return FitReading(
            False,
            f"No model: {fit_problem or 'not enough measured points'}.",
            advice=(f"Measure at least 5 levels: {more_levels}.",),
        )
    cpus = f"this machine's {cores} CPU cores" if cores else "the CPU cores"
    problems: list[str] = []
    cautions: list[str] = []
    advice: list[str] = []
    ordered = sorted(points)
    n_low, x_low = ordered[0] if ordered else (0.0, 0.0)
    n_high = max((n for n, _ in ordered), default=0.0)
    x_best = max((x for _, x in ordered), default=0.0)
    n_best = next((n for n, x in ordered if x == x_best), 0.0)
    r2 = model.r_squared

    flat = len(ordered) >= 3 and n_high >= 2 * n_low and x_best < FLAT_GROWTH * x_low
    if flat:
        grew = (
            f"the lowest level was the fastest ({qps(x_low)} at N {n_low:.2f})"
            if x_best == x_low
            else f"from {qps(x_low)} at N {n_low:.2f} to at most {qps(x_best)}"
        )
        problems.append(
            f"Throughput did not grow with concurrency: {grew}. Something was saturated "
            f"from the start: {cpus}, shared by the client threads and the database, "
            "or a resource every query needs in turn (a lock, the log's writes to disk)."
        )
        advice.append(
            "Measure in finer steps below and around the number of cores"
            + (f" ({cores} here)" if cores else "")
            + f", where concurrency can still help ({spelling['low']}), and run the "
            "database on another machine than the client, so that they do not compete "
            "for the CPUs."
        )
    if model.n_points <= 3:
        problems.append(
            f"{model.n_points} points for 3 coefficients: the curve passes through "
            "them whatever they are, so the fit tests nothing."
        )
        advice.append(f"Measure at least 5 levels: {more_levels}.")
    if not model.converged:
        problems.append("The fit did not converge: its coefficients are not a best fit.")
    if model.sigma == 1.0:
        problems.append(
            "sigma ended at its bound 1 (all work serial), which puts the peak at N* = 0: "
            "the only way the curve could follow a throughput that did not rise with "
            "concurrency."
        )
    if model.kappa == 1.0:
        problems.append("kappa ended at its bound 1: the curve could not follow the points.")
    if r2 is not None and r2 < POOR_R_SQUARED:
        problems.append(
            f"R² is {r2:.2f} (1 is a perfect fit): the curve explains only "
            f"{max(r2, 0.0):.0%} of how throughput varied between the levels."
        )
        advice.append(f"Repeat: {longer}, and {more_levels}.")
    if not flat and x_best > model.max_throughput * (1 + ABOVE_MAX_TOLERANCE):
        problems.append(
            f"A level ran faster ({qps(x_best)} at N {n_best:.2f}) than the model's "
            f"maximum ({qps(model.max_throughput)}): the curve does not reach the data. "
            "A hard limit (all CPU cores busy, say) gives a sharp knee and a flat "
            "tail, which the USL cannot draw."
        )
        advice.append(
            f"Measure more levels below and around the knee, with {spelling['workers']} "
            f"near {cpus} when the client and the database share them."
        )
    if problems:
        return FitReading(
            False,
            "The model does not describe these measurements: do not read its peak or "
            "its maximum as predictions.",
            tuple(problems),
            advice=tuple(dict.fromkeys(advice)),
        )

    if r2 is not None and r2 < ROUGH_R_SQUARED:
        cautions.append(
            f"The fit is rough (R² {r2:.2f}): the curve misses some levels; read the peak "
            "and the maximum as estimates."
        )
        advice.append(f"For a closer fit: {longer}, and {more_levels}.")
    if model.sigma == 0.0 and model.kappa == 0.0:
        summary = (
            f"Throughput grows in proportion to concurrency over the range measured "
            f"(up to N {n_high:.1f}): no contention or coherency cost shows yet."
        )
        advice.append("Measure higher levels to find where throughput stops growing.")
    elif model.kappa == 0.0:
        summary = (
            f"Throughput levels off toward a ceiling of about {qps(model.max_throughput)}: "
            f"{model.sigma:.1%} of the work is done one query at a time (contention), so "
            "each added concurrent query adds less throughput and more waiting."
        )
        if model.max_throughput > FAR_PEAK * x_best:
            cautions.append(
                "The ceiling lies well above the throughput measured: it is an extrapolation."
            )
            advice.append("Measure higher levels to see throughput approach its ceiling.")
    elif model.peak_concurrency > FAR_PEAK * n_high:
        summary = (
            f"Throughput was still rising at the highest concurrency measured (N {n_high:.1f}); "
            f"the model puts its peak near N* {model.peak_concurrency:.0f}, at about "
            f"{qps(model.max_throughput)}."
        )
        cautions.append("The peak lies well beyond the levels measured: it is an extrapolation.")
        advice.append("Measure higher levels to see the peak itself.")
    else:
        limit = (
            "contention (work done one query at a time)"
            if model.limiting_factor == "contention"
            else "coherency (the cost of keeping shared state consistent between queries)"
        )
        summary = (
            f"Throughput peaks near {model.peak_concurrency:.1f} concurrent queries, at about "
            f"{qps(model.max_throughput)}; beyond that, more concurrency only adds waiting "
            f"(response time grows) and lowers throughput. What limits it most is {limit}."
        )
    return FitReading(True, summary, (), tuple(cautions), tuple(dict.fromkeys(advice)))
