"""Level 2's portfolio (research/level2/portfolio.py, portfolio_proposer.py), as pure logic
on simulated trials: the arm that pays gets most trials, an arm that never pays falls to
the floor, the inverse-propensity credit is unbiased under the adaptive allocation, and
a restarted run draws the same arms."""

from __future__ import annotations

import random
import statistics

import pytest

from controller.research.level1.proposer import Proposal, ProposerContext
from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2 import portfolio
from controller.research.level2.portfolio_proposer import (
    PRIOR_PULLS,
    PortfolioProposer,
    prior_from,
)
from controller.research.level2.portfolio_proposer import pulls_of as _pulls
from controller.store.records import TrialRecord, TrialStatus

SPACE = SearchSpace((Knob("X", "float", 0.0, 1.0),))


class _Arm:
    """An arm that proposes a fixed change; what its trials gain is the simulation's."""

    fixes_crashes = False
    reads_context = False

    def __init__(self, name: str) -> None:
        self.label = name

    def propose(self, ctx: ProposerContext) -> Proposal:
        return Proposal({"X": 0.5}, f"[{self.label}]")


def _simulate(rates: dict[str, float], trials: int, seed: int) -> list[TrialRecord]:
    """A run of `trials` proposals by the portfolio, where a trial of arm a is kept with
    probability rates[a] (drawn by the simulation, independently of the portfolio)."""
    proposer = PortfolioProposer({a: _Arm(a) for a in rates}, seed)
    outcome = random.Random(f"outcome:{seed}")
    history: list[TrialRecord] = []
    for index in range(1, trials + 1):
        ctx = ProposerContext(index, {"X": 0.1}, SPACE, tuple(history))
        p = proposer.propose(ctx)
        kept = outcome.random() < rates[p.arm]
        history.append(TrialRecord(
            "run-1", index, True, 1, p.description, p.changes,
            status=TrialStatus.KEEP if kept else TrialStatus.DISCARD, val_bpb=1.0,
            proposal_source="proposer", arm=p.arm, arm_probability=p.arm_probability))
    return history


def test_the_arm_that_pays_gets_most_trials() -> None:
    rates = {"local": 0.05, "random_search": 0.10, "tpe": 0.45, "sobol": 0.05}
    shares = []
    for seed in range(8):
        arms = [t.arm for t in _simulate(rates, 60, seed)]
        shares.append(arms.count("tpe") / len(arms))
        assert arms.count("tpe") > max(arms.count(a) for a in rates if a != "tpe")
    assert statistics.mean(shares) > 0.5


@pytest.mark.parametrize("seed", range(4))
def test_an_arm_that_never_pays_falls_to_the_floor_and_is_retired(seed: int) -> None:
    rates = {"noop": 0.0, "good": 0.3}
    history = _simulate(rates, 100, seed)
    posts = portfolio.posteriors(["noop", "good"], _pulls(history))
    probs = portfolio.allocation(posts, portfolio.seeded("test", seed))
    floor = min(portfolio.FLOOR, 0.5 / 2)
    assert portfolio.retired(posts) == {"noop"}
    assert probs["noop"] == pytest.approx(floor)
    assert sum(probs.values()) == pytest.approx(1.0)
    # It was never given up entirely: every draw gave it at least the floor.
    assert all(t.arm_probability is not None and t.arm_probability >= floor
               for t in history if t.arm == "noop")


def test_inverse_propensity_credit_is_unbiased_under_the_adaptive_allocation() -> None:
    """Each arm's IPW keep rate, averaged over many simulated runs, is its true keep rate,
    although the allocation gave the arms very different numbers of trials."""
    rates = {"a": 0.1, "b": 0.3, "c": 0.6}
    estimates: dict[str, list[float]] = {a: [] for a in rates}
    for seed in range(150):
        pulls = _pulls(_simulate(rates, 40, seed))
        for arm in rates:
            estimates[arm].append(portfolio.ipw_keep_rate(pulls, arm).keep_rate)
    for arm, rate in rates.items():
        mean = statistics.mean(estimates[arm])
        se = statistics.stdev(estimates[arm]) / len(estimates[arm]) ** 0.5
        assert abs(mean - rate) < 3.5 * se + 0.01, (arm, mean, rate, se)


def test_a_restarted_run_draws_the_same_arms_with_the_same_probabilities() -> None:
    rates = {"local": 0.2, "tpe": 0.3, "cmaes": 0.1}
    first = _simulate(rates, 30, seed=11)
    again = _simulate(rates, 30, seed=11)
    assert [(t.arm, t.arm_probability) for t in first] == \
        [(t.arm, t.arm_probability) for t in again]
    other = _simulate(rates, 30, seed=12)
    assert [t.arm for t in first] != [t.arm for t in other]


def test_trials_a_mechanism_replaced_or_that_no_draw_made_get_no_arm_credit() -> None:
    history = _simulate({"x": 1.0, "y": 0.0}, 10, seed=1)
    replaced = [TrialRecord(**{**t.__dict__, "proposal_source": "mechanism:m"})
                for t in history]
    assert _pulls(replaced) == []
    undrawn = [TrialRecord(**{**t.__dict__, "arm": ""}) for t in history]
    assert _pulls(undrawn) == []


def test_a_second_run_starts_from_the_arm_that_won_the_first() -> None:
    first = _simulate({"local": 0.0, "tpe": 0.5, "sobol": 0.05}, 40, seed=5)
    prior = prior_from([first])
    assert all(a + b <= PRIOR_PULLS + 1e-9 for a, b in prior.values())
    fresh = PortfolioProposer({a: _Arm(a) for a in ("local", "tpe", "sobol")}, 9, prior)
    probs = fresh.allocation(ProposerContext(1, {"X": 0.1}, SPACE, ()))
    assert max(probs, key=probs.__getitem__) == "tpe" and probs["tpe"] > 0.5
    memoryless = PortfolioProposer({a: _Arm(a) for a in ("local", "tpe", "sobol")}, 9)
    even = memoryless.allocation(ProposerContext(1, {"X": 0.1}, SPACE, ()))
    assert max(even.values()) - min(even.values()) < 0.1  # no data: about uniform
