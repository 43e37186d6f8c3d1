"""The noise-aware keep rule's error rate, measured by simulation with a fixed seed:
candidates with no true gain against a baseline whose sigma is estimated from its
seeds. The rule promises a false-keep rate per candidate at or below the tail of
z > margin (2.3 % for margin 2); treating the estimated sigma as exact broke that
(7.6 % with 3 seeds). Also: every verdict's text matches its statistic."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from scipy import stats

from controller.research.level1.keep import Incumbent, NoiseAwareRule
from controller.research.settings import SearchSettings
from controller.store.records import TrialStatus

CANDIDATES = 20_000


def false_keep_rate(rule: NoiseAwareRule, seed: int = 12) -> float:
    """Keeps among CANDIDATES no-gain candidates; each gets a fresh baseline of
    `rule.baseline_seeds` runs (sigma = 1) and is re-run when the rule asks for it."""
    rng = random.Random(seed)
    keeps = 0
    for _ in range(CANDIDATES):
        base = [rng.gauss(0.0, 1.0) for _ in range(rule.baseline_seeds)]
        incumbent = Incumbent(statistics.fmean(base), rule.sigma(base), rule.baseline_seeds)
        values = [rng.gauss(0.0, 1.0)]
        if rule.wants_confirmation(values[0], incumbent):
            values.append(rng.gauss(0.0, 1.0))
        keeps += rule.judge(values, incumbent).status is TrialStatus.KEEP
    return keeps / CANDIDATES


def upper_bound(alpha: float) -> float:
    """The rate a rule with true rate `alpha` stays under in 99.9 % of simulations."""
    return float(stats.binom.ppf(0.999, CANDIDATES, alpha)) / CANDIDATES


NOMINAL = float(stats.norm.sf(2.0))  # the tail of z > margin = 2


@pytest.mark.parametrize("seeds", [3, SearchSettings().noise_seeds])
def test_false_keep_rate_stays_at_the_nominal_alpha_with_an_estimated_sigma(
        seeds: int) -> None:
    rate = false_keep_rate(NoiseAwareRule(seeds, 2.0))
    assert rate <= upper_bound(NOMINAL)
    # Not bought by refusing everything: close to the two-stage rule with sigma known
    # (about 2.1 %: the confirmation gate takes a little off the 2.3 %).
    assert rate >= 0.7 * NOMINAL


class SigmaTakenAsExact(NoiseAwareRule):
    """The weakened rule: z quantiles, as if the estimated sigma were the true one."""

    def threshold(self, z: float) -> float:
        return z


def test_the_rule_that_takes_sigma_as_exact_keeps_too_much_noise() -> None:
    """The sensitivity twin: with z quantiles and 3 seeds the rate is about 7.6 %."""
    rate = false_keep_rate(SigmaTakenAsExact(3, 2.0))
    assert rate > upper_bound(NOMINAL)
    assert rate == pytest.approx(0.076, abs=0.006)


def test_each_message_matches_its_statistic() -> None:
    rule = NoiseAwareRule(8, 2.0)
    incumbent = Incumbent(1.0, sigma=1e-3, evaluations=8)
    worse = rule.judge([1.07], incumbent)  # t = -66: far worse, not "within the noise"
    assert worse.status is TrialStatus.DISCARD
    assert "no gain" in worse.reason and "within the noise" not in worse.reason
    assert "t = -66" in worse.reason
    small = rule.judge([1.0 - 0.5e-3], incumbent)
    assert "within the noise" in small.reason and "t = +0.47" in small.reason
    kept = rule.judge([1.0 - 3e-3, 1.0 - 3e-3], incumbent)
    assert kept.status is TrialStatus.KEEP and "t > 2.43" in kept.reason
    near = rule.judge([1.0 - 1e-3, 1.0 - 1e-3], incumbent)
    assert near.status is TrialStatus.DISCARD and "not confirmed" in near.reason
    assert math.isclose(rule.statistic(1e-3, 2, incumbent), 1 / math.sqrt(1 / 2 + 1 / 8))
