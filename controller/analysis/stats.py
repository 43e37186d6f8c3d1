"""Honest comparisons of search strategies over repeats.

Thin, typed wrappers over scipy: Student-t confidence intervals of a mean (what the
reports use: at the few repeats an ablation has, a bootstrap interval is too narrow -
BCa at n = 3 covers about 72 % for a nominal 95 %), bootstrap bands, a paired permutation
test (exact when 2^n is small), Mann-Whitney for unpaired samples, Holm's step-down
correction, and the smallest p-value a test can reach at a given n — so a report can
say "n = 3 cannot show p < 0.05" instead of printing a meaningless p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 4999
EXACT_PERMUTATION_MAX_N = 16  # 2^16 sign flips: enumerate them all
# At least 10 paired repeats per arm: with n = 3 a rank test cannot reach p < 0.1.
RECOMMENDED_N = 10

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval (nan bounds when n < 2)."""

    estimate: float
    low: float
    high: float
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    """One arm against the control arm."""

    arm: str
    control: str
    test: str  # "paired permutation" or "Mann-Whitney U"
    n_arm: int
    n_control: int
    effect: float  # mean(arm) - mean(control); negative = the arm reaches a lower loss
    p_value: float
    p_holm: float = math.nan
    min_p: float = math.nan  # the smallest p this test can give at these n


def t_mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean with its Student-t interval (df = n - 1): exact for normal data at any n,
    and it widens as n shrinks where a bootstrap's would narrow. nan bounds when n < 2."""
    data = np.asarray(values, dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(data.std(ddof=1)) / \
        math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_band(curves: FloatArray, confidence: float = CONFIDENCE,
                   seed: int = 0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Pointwise mean and percentile-bootstrap band of curves (runs x steps)."""
    data = np.asarray(curves, dtype=np.float64)
    mean = data.mean(axis=0)
    if data.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    res = stats.bootstrap((data,), np.mean, axis=0, confidence_level=confidence,
                          n_resamples=1999, method="percentile",
                          rng=np.random.default_rng(seed))
    low = np.where(np.isfinite(res.confidence_interval.low), res.confidence_interval.low, mean)
    high = np.where(np.isfinite(res.confidence_interval.high), res.confidence_interval.high,
                    mean)
    return mean, np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


def _mean_difference(x: FloatArray, y: FloatArray, axis: int = -1) -> FloatArray:
    return np.asarray(np.mean(x - y, axis=axis), dtype=np.float64)


def paired_permutation_p(arm: Sequence[float], control: Sequence[float],
                         seed: int = 0) -> float:
    """Two-sided p of mean(arm - control) = 0 under random sign flips of the pairs;
    exact (every flip) for n <= 16, else 9999 random flips."""
    x, y = np.asarray(arm, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"a paired test needs equal lengths, got {x.size} and {y.size}")
    if x.size == 0:
        return math.nan
    if np.all(x == y):
        return 1.0
    resamples = 2 ** x.size if x.size <= EXACT_PERMUTATION_MAX_N else 9999
    res = stats.permutation_test((x, y), _mean_difference, permutation_type="samples",
                                 vectorized=True, n_resamples=resamples,
                                 alternative="two-sided", rng=np.random.default_rng(seed))
    return min(1.0, float(res.pvalue))


def mann_whitney_p(arm: Sequence[float], control: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p (exact for small samples without ties)."""
    if len(arm) == 0 or len(control) == 0:
        return math.nan
    return float(stats.mannwhitneyu(arm, control, alternative="two-sided").pvalue)


def min_attainable_p(test: str, n_arm: int, n_control: int) -> float:
    """The smallest two-sided p the test can give: 2 / 2^n for sign flips of n pairs,
    2 / C(n + m, n) for ranks. If it exceeds the level, no result can be significant."""
    if n_arm == 0 or n_control == 0:
        return 1.0
    if test == "paired permutation":
        return min(1.0, 2.0 / 2.0 ** n_arm)
    return min(1.0, 2.0 / math.comb(n_arm + n_control, n_arm))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order;
    nan stays nan and is not counted in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, math.nan)
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[idx])))
        out[idx] = running
    return [float(v) for v in out]


def compare(arms: dict[str, dict[int, float]], control: str, seed: int = 0) -> list[Comparison]:
    """Every arm against `control`, Holm-corrected over the family. Values are keyed by
    repeat: repeats both arms finished are paired (same seeds); with fewer than 2
    shared repeats the arms are compared unpaired (Mann-Whitney)."""
    base = arms.get(control, {})
    out: list[Comparison] = []
    for name, values in arms.items():
        if name == control:
            continue
        shared = sorted(set(values) & set(base))
        paired = len(shared) >= 2
        if paired:
            x = [values[r] for r in shared]
            y = [base[r] for r in shared]
            test, p = "paired permutation", paired_permutation_p(x, y, seed)
        else:
            x, y = list(values.values()), list(base.values())
            test, p = "Mann-Whitney U", mann_whitney_p(x, y)
        effect = float(np.mean(x)) - float(np.mean(y)) if x and y else math.nan
        out.append(Comparison(name, control, test, len(x), len(y), effect, p,
                              min_p=min_attainable_p(test, len(x), len(y))))
    adjusted = holm([c.p_value for c in out])
    return [Comparison(c.arm, c.control, c.test, c.n_arm, c.n_control, c.effect, c.p_value,
                       p_holm=a, min_p=c.min_p) for c, a in zip(out, adjusted, strict=True)]


def power_warnings(comparisons: Sequence[Comparison], level: float = 0.05) -> list[str]:
    """Plain-language warnings when n is too small for the claimed level."""
    warnings: list[str] = []
    for c in comparisons:
        if c.min_p > level:
            warnings.append(
                f"{c.arm} vs {c.control}: with n = {c.n_arm} and {c.n_control} the "
                f"{c.test} test cannot reach p < {level:g} (smallest possible p = "
                f"{c.min_p:.3g}); no difference can be claimed at this level.")
        elif min(c.n_arm, c.n_control) < RECOMMENDED_N:
            warnings.append(
                f"{c.arm} vs {c.control}: n = {min(c.n_arm, c.n_control)} < "
                f"{RECOMMENDED_N} repeats; treat the result as a screening, not a claim.")
    if len(comparisons) > 1:
        worst = max(c.min_p * len(comparisons) for c in comparisons)
        if worst > level and not any(c.min_p > level for c in comparisons):
            warnings.append(f"after Holm correction over {len(comparisons)} comparisons "
                            f"the smallest reachable adjusted p is {min(1.0, worst):.3g} "
                            f"> {level:g}: add repeats.")
    return warnings
