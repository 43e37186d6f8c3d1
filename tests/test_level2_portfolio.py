"""Level 2's portfolio (research/level2/portfolio.py, portfolio_proposer.py), as pure logic
on simulated trials: the arm that pays gets most trials (by keeps, and by rank when
nothing is kept), an arm that never pays falls to the floor, the inverse-propensity
credit is unbiased under the adaptive allocation, and a restarted run draws the same
arms."""

from __future__ import annotations

import random
import statistics

import pytest

from controller.research.level1.proposer import Proposal, ProposerContext
from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2 import portfolio
from controller.research.level2.portfolio_proposer import PortfolioProposer, rank_reward
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


def _simulate(rates: dict[str, float], trials: int, seed: int,
              lead: str | None = None) -> list[TrialRecord]:
    """A run of `trials` proposals by the portfolio (led by `lead`), where a trial of arm
    a is kept with probability rates[a] (drawn by the simulation, independently of the
    portfolio). A kept trial beats every earlier result and any other trial is the worst
    yet, so a trial's reward (its rank) is exactly 1 or 0."""
    proposer = PortfolioProposer({a: _Arm(a) for a in rates}, seed, lead)
    outcome = random.Random(f"outcome:{seed}")
    history = [TrialRecord("run-1", 0, True, 1, "baseline", {}, status=TrialStatus.KEEP,
                           val_bpb=0.0)]
    for index in range(1, trials + 1):
        ctx = ProposerContext(index, {"X": 0.1}, SPACE, tuple(history))
        p = proposer.propose(ctx)
        kept = outcome.random() < rates[p.arm]
        losses = [t.val_bpb for t in history if t.val_bpb is not None]
        history.append(TrialRecord(
            "run-1", index, True, 1, p.description, p.changes,
            status=TrialStatus.KEEP if kept else TrialStatus.DISCARD,
            val_bpb=min(losses) - 1.0 if kept else max(losses) + 1.0,
            proposal_source="proposer", arm=p.arm, arm_probability=p.arm_probability))
    return history


def _simulate_losses(means: dict[str, float], trials: int, seed: int) -> list[TrialRecord]:
    """A run where nothing is kept: arm a's trials have loss N(means[a], 1) (the baseline
    0 is never beaten by the keep rule), as on a well-tuned smooth task where local steps
    land near the baseline and global samples in the tail."""
    proposer = PortfolioProposer({a: _Arm(a) for a in means}, seed)
    outcome = random.Random(f"losses:{seed}")
    history = [TrialRecord("run-1", 0, True, 1, "baseline", {}, status=TrialStatus.KEEP,
                           val_bpb=0.0)]
    for index in range(1, trials + 1):
        p = proposer.propose(ProposerContext(index, {"X": 0.1}, SPACE, tuple(history)))
        history.append(TrialRecord(
            "run-1", index, True, 1, p.description, p.changes, status=TrialStatus.DISCARD,
            val_bpb=outcome.gauss(means[p.arm], 1.0), proposal_source="proposer",
            arm=p.arm, arm_probability=p.arm_probability))
    return history


def test_the_arm_that_pays_gets_most_trials() -> None:
    rates = {"local": 0.05, "random_search": 0.10, "tpe": 0.45, "sobol": 0.05}
    shares = []
    for seed in range(8):
        arms = [t.arm for t in _simulate(rates, 60, seed)]
        shares.append(arms.count("tpe") / len(arms))
        assert arms.count("tpe") > max(arms.count(a) for a in rates if a != "tpe")
    assert statistics.mean(shares) > 0.5


def test_with_no_keep_at_all_the_arm_whose_trials_rank_best_gets_most_trials() -> None:
    """Keeps are rare on a well-tuned task; the rank reward still tells the arms apart
    within a 30-trial run."""
    means = {"local": 0.5, "tpe": 2.0, "cmaes": 2.0, "random_search": 3.0}
    shares = []
    for seed in range(8):
        arms = [t.arm for t in _simulate_losses(means, 30, seed)[1:]]
        shares.append(arms.count("local") / len(arms))
    assert statistics.mean(shares) > 0.5, shares


def test_rank_reward_is_the_share_of_earlier_results_beaten() -> None:
    assert rank_reward(1.0, [2.0, 3.0, 0.5, 1.0]) == pytest.approx(2.5 / 4)
    assert rank_reward(None, [2.0]) == 0.0
    assert rank_reward(float("nan"), [2.0]) == 0.0
    assert rank_reward(0.1, []) == 0.5
    # Only the sign of the differences counts: a task's loss scale changes nothing.
    assert rank_reward(1e6, [2e6, 3e6]) == rank_reward(1e-6, [2e-6, 3e-6]) == 1.0


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


@pytest.mark.parametrize("lead", [None, "a"])
def test_inverse_propensity_credit_is_unbiased_under_the_adaptive_allocation(
        lead: str | None) -> None:
    """Each arm's IPW mean reward, averaged over many simulated runs, is its true keep
    rate (reward 1 for a keep, 0 otherwise here), although the allocation gave the arms
    very different numbers of trials; also when memory's lead (here the worst arm) takes
    most of them."""
    rates = {"a": 0.1, "b": 0.3, "c": 0.6}
    estimates: dict[str, list[float]] = {a: [] for a in rates}
    for seed in range(150):
        pulls = _pulls(_simulate(rates, 40, seed, lead))
        for arm in rates:
            estimates[arm].append(portfolio.ipw_reward(pulls, arm).reward)
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


def test_a_run_with_no_finished_trial_draws_its_arms_about_uniformly() -> None:
    """No prior from earlier portfolio runs (one measured to make second runs worse,
    README): without a lead, the first draw of every run treats the arms alike."""
    fresh = PortfolioProposer({a: _Arm(a) for a in ("local", "tpe", "sobol")}, 9)
    even = fresh.allocation(ProposerContext(1, {"X": 0.1}, SPACE, ()))
    assert max(even.values()) - min(even.values()) < 0.1


def test_a_lead_takes_its_share_of_every_draw_and_the_rest_follows_the_evidence() -> None:
    """Memory's lead (the winner of earlier single-strategy runs) gets LEAD_SHARE on top
    of its own share, from the first trial on; the allocation stays a distribution with
    every arm above 0, and an arm that pays still gains on the others."""
    rates = {"local": 0.0, "tpe": 0.0, "sobol": 0.7}
    history = _simulate(rates, 30, seed=4, lead="local")
    drawn = [t for t in history if t.arm]
    for t in drawn:
        if t.arm == "local":
            assert t.arm_probability is not None and t.arm_probability >= portfolio.LEAD_SHARE
        else:
            assert t.arm_probability is not None and \
                0 < t.arm_probability <= 1 - portfolio.LEAD_SHARE
    assert sum(t.arm == "local" for t in drawn) >= 18  # about 3/4 of the 30
    late = PortfolioProposer({a: _Arm(a) for a in rates}, 4, "local").allocation(
        ProposerContext(31, {"X": 0.1}, SPACE, tuple(history)))
    assert abs(sum(late.values()) - 1) < 1e-9 and min(late.values()) > 0
    assert late["sobol"] > late["tpe"]  # the arm that pays, among those memory did not lead
    with pytest.raises(ValueError, match="not an arm"):
        PortfolioProposer({"local": _Arm("local")}, 1, "tpe")


def test_the_lead_is_the_best_mean_gain_over_each_strategys_newest_runs() -> None:
    newest_first = [("tpe", 0.3), ("local", 0.1), ("tpe", 0.2), ("random_search", -0.1)]
    assert portfolio.lead_from(newest_first) == "tpe"
    # Only the newest LEAD_RUNS of a strategy count: local's old wins are forgotten.
    stale = [("local", 0.1)] * portfolio.LEAD_RUNS + [("tpe", 0.2)] + \
        [("local", 9.0)] * 5
    assert portfolio.lead_from(stale) == "tpe"
    # One strategy says nothing of which wins; a winner that gained nothing leads nothing.
    assert portfolio.lead_from([("local", 0.5), ("local", 0.4)]) is None
    assert portfolio.lead_from([("local", 0.0), ("tpe", -0.2)]) is None
    assert portfolio.lead_from([("local", float("nan")), ("tpe", 0.1), ("local", 0.05)]) \
        == "tpe"
    assert portfolio.lead_from([]) is None
