"""Level 2's portfolio of search strategies: which arm (an offline proposer, or the LLM)
proposes each trial, chosen by what the arms have gained in this run.

Which search wins depends on the task (random search beat local 30-fold on a small
classifier; local won on the surrogate), so Level 2 does not bet on one. Every trial goes
to an arm drawn from known probabilities:

- A trial's reward is its rank among the run's earlier results: the share of the
  baseline and the earlier finished trials (by index) whose loss it beats, ties half;
  a crash or a trial with no loss earns 0, a new best nearly 1. A rank needs no scale of
  the loss, so the rule is the same for every task, in either direction, with noise or
  with sigma = 0; and unlike "was it kept" it is dense: an arm whose trials land near
  the best (local search on a smooth, well-tuned task) is told apart within a few trials
  from one whose trials land in the tail (global sampling there), long before either
  makes a keep.
- The posterior of each arm's mean reward is Beta(1 + reward, 1 + (1 - reward)) summed
  over its pulls (the fractional-reward form of Bernoulli Thompson sampling), with each
  arm's older pulls discounted: a search that paid early, from a poor baseline, must
  keep paying. A rank varies less than a coin flip of the same mean, so each pull counts
  as m(1 - m) / s^2 observations (the Beta whose variance matches the arm's observed
  rewards, between 1 and MAX_WEIGHT): an arm whose trials all land in the tail is told
  apart in three pulls, not ten. Thompson sampling's allocation - the chance each arm's
  draw is the highest - is computed by seeded Monte Carlo, so it is a number that can
  be recorded.
- Every arm keeps a floor probability, so an arm that starts slowly can come back, and
  every propensity is positive. An arm is retired - left with the floor only - while it
  has had a fair number of pulls and even an optimistic reading of its mean reward is
  below the leading arm's; it returns if the others decline.

The arm and its probability are stored with the trial. From them the credit of each arm
is estimated without bias by inverse-propensity weighting (`ipw_reward`), whatever the
allocation did. The probabilities and the draw depend only on the run's seed, the trial
index, the retry and the stored trials, so a restarted controller chooses the same arm.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv

DISCOUNT = 0.95  # weight of an arm's pull per later pull of the same arm
DRAWS = 4000  # Monte Carlo draws for the Thompson allocation
FLOOR = 0.02  # each arm's least probability (less when there are many arms)
MAX_WEIGHT = 4.0  # observations one pull may count as (variance matching)
RETIRE_AFTER = 3  # pulls before an arm can be retired
RETIRE_QUANTILE = 0.9  # ... when this quantile of its reward is below the leader's mean
LEAD_SHARE = 0.75  # the draws reserved for the lead (memory's or the request's)
LEAD_RUNS = 5  # the newest single-strategy runs per strategy the lead is taken from


@dataclass(frozen=True)
class Pull:
    """One finished trial an arm proposed: its reward (rank, in [0, 1]), whether it was
    kept, and with what probability the arm had been chosen for it."""

    arm: str
    probability: float
    reward: float
    kept: bool


@dataclass(frozen=True)
class ArmPosterior:
    arm: str
    pulls: int
    kept: int
    alpha: float  # Beta posterior of the mean reward, older pulls discounted
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def seeded(*parts: object) -> np.random.Generator:
    """A generator that depends only on `parts` (not on Python's hash seed)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def posteriors(arms: Sequence[str], pulls: Sequence[Pull]) -> list[ArmPosterior]:
    """Each arm's discounted Beta posterior over its pulls (in trial order), from a
    uniform start: no prior from earlier runs (README: why)."""
    out = []
    for arm in arms:
        mine = [p for p in pulls if p.arm == arm]
        n = len(mine)
        weights = [DISCOUNT ** (n - 1 - i) for i in range(n)]
        scale = pull_weight([p.reward for p in mine])
        good = scale * sum(w * p.reward for w, p in zip(weights, mine, strict=True))
        bad = scale * sum(w * (1.0 - p.reward) for w, p in zip(weights, mine, strict=True))
        out.append(ArmPosterior(arm, n, sum(p.kept for p in mine),
                                1.0 + good, 1.0 + bad))
    return out


def pull_weight(rewards: Sequence[float]) -> float:
    """How many Bernoulli observations one pull is worth: m(1 - m) / s^2 for rewards of
    mean m and sample variance s^2, in [1, MAX_WEIGHT]; 1 below three pulls (no variance
    to trust yet) and for 0/1 rewards (a coin flip is one observation)."""
    if len(rewards) < 3:
        return 1.0
    m = sum(rewards) / len(rewards)
    var = sum((r - m) ** 2 for r in rewards) / (len(rewards) - 1)
    return min(MAX_WEIGHT, max(1.0, m * (1.0 - m) / max(var, 1e-9)))


def chance_best(posts: Sequence[ArmPosterior], rng: np.random.Generator) -> np.ndarray:
    """P(arm's mean reward is the highest) under the posteriors, by Monte Carlo."""
    alpha = np.array([p.alpha for p in posts])
    beta = np.array([p.beta for p in posts])
    draws = rng.beta(alpha, beta, size=(DRAWS, len(posts)))
    wins = np.bincount(draws.argmax(axis=1), minlength=len(posts))
    return wins / DRAWS


def allocation(posts: Sequence[ArmPosterior], rng: np.random.Generator) -> dict[str, float]:
    """The probability each arm proposes the next trial: Thompson's chance of being best,
    mixed with a floor that every arm keeps. A retired arm keeps only the floor. No
    probability is ever 0, so every arm's inverse-propensity credit stays unbiased."""
    best = chance_best(posts, rng)
    floor = min(FLOOR, 0.5 / len(posts))
    out = retired(posts)
    share = np.array([0.0 if p.arm in out else b for p, b in zip(posts, best, strict=True)])
    if share.sum() <= 0:
        share = np.ones(len(posts))
    share = share / share.sum()
    return {p.arm: floor + (1.0 - floor * len(posts)) * float(s)
            for p, s in zip(posts, share, strict=True)}


def lead_from(results: Sequence[tuple[str, float]],
              per_strategy: int = LEAD_RUNS) -> str | None:
    """The strategy with the highest mean gain over its newest `per_strategy` runs, from
    (strategy, gain) of the task's earlier single-strategy runs, newest first. None
    unless at least two strategies have runs and the winner gained: one strategy's
    record says nothing of which wins. Runs of the portfolio are not in `results`: which
    arm did well there depends on how the portfolio allocated (it gave most trials to
    local search on every task of bench/portfolio_suite.py)."""
    gains: dict[str, list[float]] = {}
    for strategy, gain in results:
        if len(mine := gains.setdefault(strategy, [])) < per_strategy and \
                math.isfinite(gain):
            mine.append(gain)
    means = {s: sum(g) / len(g) for s, g in gains.items() if g}
    if len(means) < 2:
        return None
    best = max(sorted(means), key=means.__getitem__)
    return best if means[best] > 0 else None


def led(probabilities: Mapping[str, float], lead: str | None) -> dict[str, float]:
    """`probabilities` with LEAD_SHARE of the mass moved to `lead` (the strategy that won
    the task's earlier single-strategy runs, or the one the request names), so a second
    run starts with what won the first; the rest still follows this run's evidence.
    Still a known probability per arm, so inverse-propensity credit stays unbiased. No
    lead (None): unchanged."""
    if lead is None or lead not in probabilities:
        return dict(probabilities)
    return {arm: (1.0 - LEAD_SHARE) * p + (LEAD_SHARE if arm == lead else 0.0)
            for arm, p in probabilities.items()}


def retired(posts: Sequence[ArmPosterior]) -> set[str]:
    """The arms that stopped paying: after a fair number of pulls, even the optimistic
    end of the arm's mean reward (its posterior's RETIRE_QUANTILE) is below the expected
    reward of the best arm. They keep the floor, and come back if the others decline."""
    leader = max(p.mean for p in posts)
    return {p.arm for p in posts if p.pulls >= RETIRE_AFTER
            and float(betaincinv(p.alpha, p.beta, RETIRE_QUANTILE)) < leader}


def draw(probabilities: Mapping[str, float], rng: np.random.Generator) -> str:
    arms = sorted(probabilities)
    weights = np.array([probabilities[a] for a in arms])
    return arms[int(rng.choice(len(arms), p=weights / weights.sum()))]


@dataclass(frozen=True)
class Credit:
    """An arm's inverse-propensity estimate of its mean reward: the mean rank its trials
    would have had had it proposed every trial, with its standard error."""

    arm: str
    pulls: int
    kept: int
    reward: float
    stderr: float


def ipw_reward(pulls: Sequence[Pull], arm: str) -> Credit:
    """Horvitz-Thompson: mean over all portfolio trials of reward * [arm chose] / p.
    Unbiased for the arm's mean reward whatever the allocation, because each p was the
    probability the trial's draw actually used."""
    n = len(pulls)
    terms = [p.reward / p.probability if p.arm == arm else 0.0 for p in pulls]
    mine = [p for p in pulls if p.arm == arm]
    if n == 0:
        return Credit(arm, 0, 0, math.nan, math.nan)
    mean = sum(terms) / n
    var = sum((t - mean) ** 2 for t in terms) / (n - 1) if n > 1 else math.nan
    return Credit(arm, len(mine), sum(p.kept for p in mine), mean, math.sqrt(var / n))
