"""Keep rules: when does a candidate replace the incumbent?

`GreedyRule` keeps any strict improvement (Karpathy's loop; the paper's group A).
`NoiseAwareRule` first measures the noise sigma of val_bpb by running the baseline with
k seeds. A candidate's gain over the incumbent is then measured in units of the noise of
that difference, sigma * sqrt(1/n + 1/m) for n candidate and m incumbent evaluations
(a z-score). A first evaluation with z > margin/2 earns a confirmation run on another
seed; the candidate is kept only if the mean of both gives z > margin. A lucky seed
alone (REFERENCE §1: a changed seed was once "kept") rarely passes both; with the
default margin of 2 a true gain of 3 sigma usually does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.research.settings import SearchSettings
from controller.store.records import TrialStatus


@dataclass(frozen=True)
class Incumbent:
    val_bpb: float  # mean over its evaluations
    sigma: float | None  # noise of one evaluation; None under the greedy rule
    evaluations: int = 1  # how many runs its mean is over


@dataclass(frozen=True)
class Verdict:
    status: TrialStatus
    reason: str


class KeepRule(Protocol):
    baseline_seeds: int  # evaluations of the baseline

    def wants_confirmation(self, val_bpb: float, incumbent: Incumbent) -> bool:
        """After a candidate's first evaluation: run it again on another seed?"""
        ...

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> Verdict: ...

    def sigma(self, baseline_values: Sequence[float]) -> float | None: ...


class GreedyRule:
    baseline_seeds = 1

    def __init__(self, min_improvement: float = 0.0) -> None:
        self.min_improvement = min_improvement

    def wants_confirmation(self, val_bpb: float, incumbent: Incumbent) -> bool:
        return False

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> Verdict:
        value = statistics.fmean(values)
        gain = incumbent.val_bpb - value
        if gain > self.min_improvement:
            return Verdict(TrialStatus.KEEP, f"improves the incumbent by {gain:.6f}")
        return Verdict(TrialStatus.DISCARD, f"does not beat the incumbent ({-gain:+.6f})")

    def sigma(self, baseline_values: Sequence[float]) -> float | None:
        return None


class NoiseAwareRule:
    def __init__(self, seeds: int, margin: float) -> None:
        if seeds < 2:
            raise ValueError("measuring noise needs at least 2 seeds")
        self.baseline_seeds = seeds
        self.margin = margin

    def sigma(self, baseline_values: Sequence[float]) -> float | None:
        return statistics.stdev(baseline_values) if len(baseline_values) >= 2 else None

    @staticmethod
    def z(gain: float, runs: int, incumbent: Incumbent) -> float:
        """The gain in units of the noise of the difference of two means."""
        sigma = incumbent.sigma or 0.0
        noise = sigma * math.sqrt(1 / runs + 1 / max(incumbent.evaluations, 1))
        if noise <= 0:
            return math.inf if gain > 0 else -math.inf
        return gain / noise

    def wants_confirmation(self, val_bpb: float, incumbent: Incumbent) -> bool:
        return self.z(incumbent.val_bpb - val_bpb, 1, incumbent) > self.margin / 2

    def judge(self, values: Sequence[float], incumbent: Incumbent) -> Verdict:
        gain = incumbent.val_bpb - statistics.fmean(values)
        z = self.z(gain, len(values), incumbent)
        text = f"gain {gain:+.6f} (z = {z:+.2f} over {len(values)} run(s))"
        if len(values) < 2:
            return Verdict(TrialStatus.DISCARD, f"{text} is within the noise; no confirmation")
        if z > self.margin:
            return Verdict(TrialStatus.KEEP, f"{text} beats the margin z > {self.margin:g}, "
                                             "confirmed by a re-run")
        return Verdict(TrialStatus.DISCARD, f"{text} was not confirmed (needs z > "
                                            f"{self.margin:g})")


def make_rule(search: SearchSettings) -> KeepRule:
    if search.keep_rule == "noise":
        return NoiseAwareRule(search.noise_seeds, search.noise_margin)
    return GreedyRule(search.min_improvement)
