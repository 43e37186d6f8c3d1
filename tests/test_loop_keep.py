"""The keep rule on a synthetic noisy task with known truth: the noise-aware rule
measures sigma on the baseline's seeds, does not keep pure noise, keeps a real gain of
3 sigma, and never runs a seed-only change; the greedy rule stays available."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from controller.api import convert
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.research.level1.keep import GreedyRule, Incumbent, NoiseAwareRule
from controller.research.level1.proposer import Proposal, ProposerContext
from controller.store.records import TrialStatus
from tests.test_loop_harness import SIGMA, SyntheticTask, make_loop, run_settings


class Scripted:
    """Proposes `make(index)` as knob changes: the loop applies and checks them."""

    label = "scripted"
    fixes_crashes = False

    def __init__(self, make: Callable[[int], dict[str, Any]]) -> None:
        self.make = make

    def propose(self, ctx: ProposerContext) -> Proposal:
        return Proposal(changes=self.make(ctx.trial_index), description="scripted")


def _run(tmp_path: Path, rule: str, make: Callable[[int], dict[str, Any]], trials: int,
         seed: int = 0) -> list[TrialStatus | None]:
    settings = run_settings(trials, keep_rule=rule, seed=seed)
    parts = make_loop(tmp_path / f"{rule}-{seed}", SyntheticTask(), settings,
                      proposer=Scripted(make))
    parts.loop.run()
    return [t.status for t in parts.store.trials("run-test")[1:]]


def _noise_only(index: int) -> dict[str, Any]:
    """WARMUP_RATIO does nothing in the synthetic task: any 'gain' is noise."""
    return {"WARMUP_RATIO": round(0.01 * index, 3)}


def test_pure_noise_is_kept_by_the_greedy_rule_but_not_by_the_noise_aware_rule(
        tmp_path: Path) -> None:
    greedy = _run(tmp_path, "greedy", _noise_only, 30)
    noise = _run(tmp_path, "noise", _noise_only, 30)
    assert greedy.count(TrialStatus.KEEP) >= 2
    assert noise.count(TrialStatus.KEEP) == 0


def test_the_noise_rule_measures_sigma_on_the_baseline_seeds(tmp_path: Path) -> None:
    settings = run_settings(1, keep_rule="noise", noise_seeds=4)
    task = SyntheticTask()
    parts = make_loop(tmp_path, task, settings,
                      proposer=Scripted(_noise_only))
    parts.loop.run()
    run = parts.store.get_run("run-test")
    baseline = parts.store.trials("run-test")[0]
    assert [e["seed"] for e in baseline.metrics["evaluations"]] == [0, 1, 2, 3]
    assert run.noise_sigma is not None and 0.2 * SIGMA < run.noise_sigma < 3 * SIGMA
    assert run.baseline_val_bpb == pytest.approx(
        sum(e["val_bpb"] for e in baseline.metrics["evaluations"]) / 4)


def test_a_request_that_leaves_noise_seeds_unset_measures_sigma_on_eight_seeds(
        tmp_path: Path) -> None:
    """The API's "0 means 8": the baseline of such a run is evaluated on seeds 0..7."""
    request = rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                                   search=rpb.SearchSettings(keep_rule=rpb.KEEP_RULE_NOISE),
                                   budgets=rpb.Budgets(max_trials=1))
    settings = run_settings(1, **asdict(convert.run_settings(request).search))
    parts = make_loop(tmp_path, SyntheticTask(), settings, proposer=Scripted(_noise_only))
    parts.loop.run()
    baseline = parts.store.trials("run-test")[0]
    assert [e["seed"] for e in baseline.metrics["evaluations"]] == list(range(8))


def _lr_for_gain(gain: float) -> float:
    """The MATRIX_LR whose true val_bpb is `gain` below the baseline's (0.04)."""
    task = SyntheticTask()
    base = task.read_knobs(task.baseline_source())
    target = task.truth(base) - gain - 0.0005 * (base["DEPTH"] - 10) ** 2 - 1.0
    return 0.08 * math.exp(-0.5 * math.sqrt(target / 0.01))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_real_gain_of_three_sigma_is_kept_and_confirmed(tmp_path: Path, seed: int) -> None:
    lr = _lr_for_gain(3 * SIGMA)
    statuses = _run(tmp_path, "noise", lambda i: {"MATRIX_LR": round(lr, 6)}, 1, seed=seed)
    assert statuses == [TrialStatus.KEEP]


def test_a_seed_only_change_is_never_run_or_kept(tmp_path: Path) -> None:
    statuses = _run(tmp_path, "noise", lambda i: {"SEED": 1000 + i}, 3)
    assert statuses == [TrialStatus.CRASH] * 3  # invalid: rejected before running


def test_judgements_in_units_of_the_noise_of_the_difference() -> None:
    """Thresholds are t quantiles (df = seeds - 1) of the tails of z > 1 and z > 2:
    1.32 and 4.53 with 3 baseline seeds."""
    incumbent = Incumbent(1.0, sigma=0.001, evaluations=3)
    rule = NoiseAwareRule(seeds=3, margin=2.0)
    assert rule.confirm_threshold == pytest.approx(1.3213, abs=1e-4)
    assert rule.keep_threshold == pytest.approx(4.5265, abs=1e-4)
    one_run = 0.001 * math.sqrt(1 + 1 / 3) * rule.confirm_threshold
    assert rule.wants_confirmation(1.0 - 1.01 * one_run, incumbent)
    assert not rule.wants_confirmation(1.0 - 0.99 * one_run, incumbent)
    two_runs = 0.001 * math.sqrt(1 / 2 + 1 / 3) * rule.keep_threshold
    assert rule.judge([1.0 - 1.01 * two_runs] * 2, incumbent).status is TrialStatus.KEEP
    assert rule.judge([1.0 - 0.99 * two_runs] * 2, incumbent).status is TrialStatus.DISCARD
    assert rule.judge([0.9], incumbent).status is TrialStatus.DISCARD  # never unconfirmed
    assert GreedyRule().judge([0.9999], incumbent).status is TrialStatus.KEEP
    assert GreedyRule(min_improvement=0.001).judge([0.9999], incumbent).status \
        is TrialStatus.DISCARD
