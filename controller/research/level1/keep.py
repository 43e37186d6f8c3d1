"""Keep rules: when does a candidate replace the incumbent?

`GreedyRule` keeps any strict improvement (Karpathy's loop; the paper's group A).
`NoiseAwareRule` first measures the noise sigma of the loss by running the baseline with
k seeds (default 8). A candidate's gain over the incumbent is then measured in units of
the noise of that difference, s * sqrt(1/n + 1/m) for n candidate and m incumbent
evaluations: a t statistic, because s is an estimate with k - 1 degrees of freedom (with
3 seeds, treating s as exact keeps 7.6 % of no-gain candidates instead of 2 %). A first
evaluation with t above the confirmation threshold earns a re-run on another seed; the
candidate is kept only if the mean of both passes the keep threshold. `margin` keeps its
meaning "z > margin if sigma were known": each threshold is the t quantile of the same
tail probability, so the false-keep rate per no-gain candidate stays at or below
1 - Phi(margin) (2.3 % for the default 2) whatever k is. A lucky seed alone (a changed
seed was once "kept" in the Bilevel paper's runs) rarely passes both.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scipy import stats

from controller.research.settings import SearchSettings
from controller.store.records import TrialStatus


@dataclass(frozen=True)
class Incumbent:
    loss: float  # mean over its evaluations
    sigma: float | None  # noise of one evaluation; None under the greedy rule
    evaluations: int = 1  # how many runs its mean is over


@dataclass(frozen=True)
class KeepDecision:
    status: TrialStatus
    reason: str


class KeepRule(Protocol):
    baseline_seeds: int  # evaluations of the baseline

    def wants_confirmation(self, loss: float, incumbent: Incumbent) -> bool:
        """After a candidate's first evaluation: run it again on another seed?"""
        ...

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> KeepDecision: ...

    def sigma(self, baseline_values: Sequence[float]) -> float | None: ...


class GreedyRule:
    baseline_seeds = 1

    def __init__(self, min_improvement: float = 0.0) -> None:
        self.min_improvement = min_improvement

    def wants_confirmation(self, loss: float, incumbent: Incumbent) -> bool:
        return False

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> KeepDecision:
        value = statistics.fmean(values)
        gain = incumbent.loss - value
        if gain > self.min_improvement:
            return KeepDecision(TrialStatus.KEEP, f"improves the incumbent by {gain:.6f}")
        return KeepDecision(TrialStatus.DISCARD, f"does not beat the incumbent ({-gain:+.6f})")

    def sigma(self, baseline_values: Sequence[float]) -> float | None:
        return None


class NoiseAwareRule:
    def __init__(self, seeds: int, margin: float) -> None:
        if seeds < 2:
            raise ValueError("measuring noise needs at least 2 seeds")
        self.baseline_seeds = seeds
        self.margin = margin
        self.confirm_threshold = self.threshold(margin / 2)
        self.keep_threshold = self.threshold(margin)

    @property
    def df(self) -> int:
        """Degrees of freedom of sigma: it is the std of the baseline's seeds."""
        return self.baseline_seeds - 1

    def threshold(self, z: float) -> float:
        """The t value with the tail probability that `z` has under a normal."""
        if not math.isfinite(z):
            return z
        return float(stats.t.isf(stats.norm.sf(z), self.df))

    def sigma(self, baseline_values: Sequence[float]) -> float | None:
        return statistics.stdev(baseline_values) if len(baseline_values) >= 2 else None

    @staticmethod
    def statistic(gain: float, runs: int, incumbent: Incumbent) -> float:
        """The gain in units of the (estimated) noise of the difference of two means."""
        sigma = incumbent.sigma or 0.0
        noise = sigma * math.sqrt(1 / runs + 1 / max(incumbent.evaluations, 1))
        if noise <= 0:
            return math.inf if gain > 0 else -math.inf
        return gain / noise

    def wants_confirmation(self, loss: float, incumbent: Incumbent) -> bool:
        return self.statistic(incumbent.loss - loss, 1, incumbent) > \
            self.confirm_threshold

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> KeepDecision:
        gain = incumbent.loss - statistics.fmean(values)
        t = self.statistic(gain, len(values), incumbent)
        text = f"gain {gain:+.6f} (t = {t:+.2f} over {len(values)} run(s), df {self.df})"
        if len(values) < 2:
            if gain <= 0:
                return KeepDecision(TrialStatus.DISCARD, f"{text}: no gain over the incumbent")
            if t <= self.confirm_threshold:
                return KeepDecision(TrialStatus.DISCARD, f"{text} is within the noise (a "
                               f"confirmation run needs t > {self.confirm_threshold:.2f})")
            return KeepDecision(TrialStatus.DISCARD, f"{text}: no confirmation run was made")
        if t > self.keep_threshold:
            return KeepDecision(TrialStatus.KEEP, f"{text} beats the keep threshold t > "
                                             f"{self.keep_threshold:.2f}, confirmed by a re-run")
        return KeepDecision(TrialStatus.DISCARD, f"{text} was not confirmed (needs t > "
                                            f"{self.keep_threshold:.2f})")


def make_rule(search: SearchSettings) -> KeepRule:
    if search.keep_rule == "noise":
        return NoiseAwareRule(search.noise_seeds, search.noise_margin)
    return GreedyRule(search.min_improvement)
