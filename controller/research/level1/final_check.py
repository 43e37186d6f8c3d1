"""The end-of-run check: is the best really better than the baseline?

A search's best is the minimum over many noisy evaluations, so its value in the search
is biased low (a run once closed with "beats the baseline by 0.000252" at sigma 2.8e-4,
and re-evaluated on fresh seeds that best was worse). At the end of a run the best and
the baseline train.py are run again on `final_seeds` fresh seeds no trial used, paired
(seed r runs both, so what a seed shares cancels in the difference). The closing line
gives the mean paired difference with its 95 % t interval and its size in units of the
noise sigma, and says "beats" only when the interval lies below 0.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

from controller.research.level1 import evaluation
from controller.research.task import GPT, Objective, Task

FRESH_SEED_OFFSET = 2_000_000_000  # far from search seeds and the ablation's re-evaluations
CONFIDENCE = 0.95


def fresh_seeds(seed: int, count: int) -> list[int]:
    return [(seed + FRESH_SEED_OFFSET + r) % 2**63 for r in range(count)]


@dataclass(frozen=True)
class FinalCheck:
    best_trial: int
    seeds: tuple[int, ...]
    best_values: tuple[float, ...]
    baseline_values: tuple[float, ...]
    delta: float  # mean of best - baseline over the paired seeds (negative: better)
    low: float  # the 95 % t interval of delta
    high: float
    sigma: float  # noise of one evaluation (the run's measured sigma, else these runs')
    sigma_source: str
    crashed: str = ""  # set when a re-run crashed: then nothing else is claimed

    @property
    def beats(self) -> bool:
        return not self.crashed and self.high < 0

    @property
    def worse(self) -> bool:
        return not self.crashed and self.low > 0

    @property
    def delta_over_sigma(self) -> float:
        return self.delta / self.sigma if self.sigma > 0 else math.nan

    def verdict(self, objective: Objective = GPT) -> str:
        """The closing words; Δ in the task's metric (best - baseline; for a "maximize"
        task positive is better), the values here being losses."""
        if self.crashed:
            return f"not re-evaluated: {self.crashed}"
        n = len(self.seeds)
        delta, low, high = self.delta, self.low, self.high
        if objective.maximize:
            delta, low, high = -delta, -high, -low
        name = "" if objective == GPT else f" {objective.metric}"
        ratio = delta / self.sigma if self.sigma > 0 else math.nan
        core = (f"on {n} fresh paired seeds Δ{name} = {delta:+.6f} (95 % CI "
                f"[{low:+.6f}, {high:+.6f}]), Δ/σ = {ratio:+.1f} "
                f"(σ {self.sigma:.1e}, {self.sigma_source})")
        if self.beats:
            return f"{core}: beats the baseline"
        if self.worse:
            return f"{core}: worse than the baseline"
        return f"{core}: does not beat the baseline (the interval includes 0)"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds), "best_values": list(
            self.best_values), "baseline_values": list(self.baseline_values),
            "beats": self.beats, "worse": self.worse, "delta_over_sigma": (
                None if math.isnan(self.delta_over_sigma) else self.delta_over_sigma),
            "confidence": CONFIDENCE}


def paired_interval(best: Sequence[float], baseline: Sequence[float]) -> tuple[float, float,
                                                                              float]:
    """Mean paired difference and its t interval (df = n - 1); n = 1 gives (-inf, inf)."""
    diffs = [b - a for b, a in zip(best, baseline, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(diffs) - 1)) * \
        statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def run_check(task: Task, best_source: str, baseline_source: str, best_trial: int,
              seeds: Sequence[int], cancel: threading.Event,
              run_sigma: float | None) -> FinalCheck | None:
    """Evaluate both sources on `seeds`, one run at a time, the pair of each seed back to
    back; None when `cancel` interrupted it.

    One at a time because a time-budgeted trainer measures its host as much as its code:
    two runs sharing a CPU host's cores each get fewer steps (seen: val_bpb 3.7 against
    2.7 for the same train.py), which would put the slot schedule into the difference."""
    best_values: list[float] = []
    base_values: list[float] = []
    crashed = ""
    for seed in seeds:
        for name, source, values in (("best", best_source, best_values),
                                     ("baseline", baseline_source, base_values)):
            result = evaluation.evaluate(task, source, [seed], cancel)
            if result is None:
                return None
            if result.outcome.crashed or len(result.values) != 1:
                crashed = crashed or (f"the {name} crashed on a fresh seed "
                                      f"({result.outcome.job_status})")
            values.extend(result.values)
        if crashed:
            break  # nothing is claimed after a crash; spare the remaining runs
    if crashed:
        return FinalCheck(best_trial, tuple(seeds), tuple(best_values), tuple(base_values),
                          math.nan, math.nan, math.nan, math.nan, "", crashed)
    delta, low, high = paired_interval(best_values, base_values)
    if run_sigma:
        sigma, source = run_sigma, "measured on the baseline's seeds"
    elif len(seeds) >= 2:
        sigma = math.sqrt((statistics.variance(best_values) +
                           statistics.variance(base_values)) / 2)
        source = "pooled over these re-runs"
    else:
        sigma, source = math.nan, "unknown from one seed"
    return FinalCheck(best_trial, tuple(seeds), tuple(best_values), tuple(base_values), delta,
                      low, high, sigma, source)
