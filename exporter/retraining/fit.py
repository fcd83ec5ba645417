"""Least-squares fit of a retraining cost against PreIndex, with prediction intervals.

Pure Python (math only): `carbon-exporter estimate-retraining` must not pull numpy or scipy
into the exporter's install.

The model is a straight line, cost = a + b * index, fitted by ordinary least squares. The
paper reports rank correlations (monotone, not necessarily linear); a line is the simplest
model that gives an interval, and the output states the rank correlation and R^2 beside it
so a poor fit is visible. The prediction interval is the classical one for a new
observation at x0:

    y0 +- t(1 - alpha/2, n - 2) * s * sqrt(1 + 1/n + (x0 - mean(x))^2 / Sxx)

with s the residual standard deviation. It assumes independent, roughly normal residuals
of constant spread; a cost cannot be negative, so the lower bound is clipped at 0 (and the
output says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from exporter.runs.stats import t_cdf as student_t_cdf  # shared with `compare`

# Below this many runs the fit is refused: with 5 runs the interval has 3 degrees of
# freedom (t(0.95, 3) = 2.35); with fewer it widens so fast that it says little.
MIN_RUNS = 5
ABSOLUTE_MIN_RUNS = 3  # n - 2 >= 1 degree of freedom: the least an interval needs at all


class FitError(ValueError):
    """Too few runs, or runs that cannot carry a line (all at the same index)."""


@dataclass(frozen=True)
class LineFit:
    n: int
    intercept: float
    slope: float
    residual_sd: float
    r_squared: float
    spearman: float  # rank correlation of x and y (ties: mid-ranks)
    x_min: float
    x_max: float
    x_mean: float
    sxx: float

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x

    def interval(self, x: float, confidence: float) -> tuple[float, float]:
        """Prediction interval for one new observation at x."""
        t = student_t_quantile(0.5 + confidence / 2.0, self.n - 2)
        half = t * self.residual_sd * math.sqrt(1.0 + 1.0 / self.n
                                                + (x - self.x_mean) ** 2 / self.sxx)
        centre = self.predict(x)
        return centre - half, centre + half

    def extrapolates(self, x: float) -> bool:
        return x < self.x_min or x > self.x_max


def fit_line(xs: Sequence[float], ys: Sequence[float], min_runs: int = MIN_RUNS) -> LineFit:
    n = len(xs)
    if n != len(ys):
        raise FitError("x and y differ in length")
    if n < max(min_runs, ABSOLUTE_MIN_RUNS):
        raise FitError(f"{n} run{'s' if n != 1 else ''} to fit on, the minimum is "
                       f"{max(min_runs, ABSOLUTE_MIN_RUNS)} (--min-runs)")
    x_mean = math.fsum(xs) / n
    y_mean = math.fsum(ys) / n
    sxx = math.fsum((x - x_mean) ** 2 for x in xs)
    if sxx <= 0:
        raise FitError(f"all {n} runs have the same index ({xs[0]:g}): a line cannot be fitted")
    sxy = math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
    syy = math.fsum((y - y_mean) ** 2 for y in ys)
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    sse = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    residual_sd = math.sqrt(max(sse, 0.0) / (n - 2))
    r_squared = 1.0 - sse / syy if syy > 0 else 1.0
    return LineFit(n=n, intercept=intercept, slope=slope, residual_sd=residual_sd,
                   r_squared=r_squared, spearman=spearman(xs, ys), x_min=min(xs),
                   x_max=max(xs), x_mean=x_mean, sxx=sxx)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (NaN when one side is constant)."""
    return pearson(ranks(xs), ranks(ys))


# --- Student's t quantile without scipy ------------------------------------------------------
# The t CDF (incomplete beta) is exporter/runs/stats.py's t_cdf; this quantile adds what
# stats.t_quantile leaves out: p below 0.5, argument checks and an overflow cap.

def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for df degrees of freedom (bisection; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if df <= 0:
        raise ValueError("df must be positive")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0
