"""Logic of the sdk and of every built-in mechanism, in-process (no Docker).

The same modules run in the sandboxed host (tests/test_mechanism_sandbox.py); here
their decisions are checked directly on hand-made JSON states.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.gates import static_check
from mechanisms import library, sdk
from mechanisms.library.crash_memory import CrashMemory
from mechanisms.library.elite_crossover import EliteCrossover
from mechanisms.library.latin_hypercube import LatinHypercube
from mechanisms.library.noop import NoOp
from mechanisms.library.plateau_restart import PlateauRestart
from mechanisms.library.step_bandit import SCALES, StepBandit
from mechanisms.library.tabu import TabuSearch
from mechanisms.wire import LoopState, TrialView

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("BATCH", "int", 2**10, 2**16, power_of_two=True),
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("WD", "float", 0.0, 1.0),
    Knob("PATTERN", "choice", choices=("SSSL", "L")),
))
INCUMBENT: dict[str, Any] = {"DEPTH": 8, "BATCH": 4096, "LR": 0.01, "WD": 0.2, "PATTERN": "SSSL"}


def trial(index: int, changes: dict[str, Any], status: str = "discard",
          val: float | None = 1.01, before: float | None = 1.0) -> dict[str, Any]:
    return TrialView(index, changes, {**INCUMBENT, **changes}, status,  # type: ignore[arg-type]
                     None if status == "crash" else val, before,
                     crash="RuntimeError: boom" if status == "crash" else "").to_json()


def state(history: list[dict[str, Any]] | None = None, index: int = 1,
          incumbent: dict[str, Any] | None = None) -> dict[str, Any]:
    views = tuple(TrialView.from_json(t) for t in history or [])
    return LoopState(SPACE, incumbent or INCUMBENT, 1.0, index, 7, views).to_json()


def proposal(**changes: Any) -> dict[str, Any]:
    return {"changes": changes, "description": "test"}


# -- sdk -------------------------------------------------------------------------------

def test_unit_is_log_scaled_for_log_knobs() -> None:
    lr = sdk.knobs(state())["LR"]
    assert sdk.unit(lr, 1e-4) == 0.0 and sdk.unit(lr, 1.0) == 1.0
    assert sdk.unit(lr, 1e-2) == pytest.approx(0.5)


def test_distance_is_normalised_per_knob_and_zero_one_for_choices() -> None:
    s = state()
    assert sdk.distance(s, INCUMBENT, INCUMBENT) == 0.0
    assert sdk.distance(s, INCUMBENT, {**INCUMBENT, "PATTERN": "L"}) == 1.0
    assert sdk.distance(s, INCUMBENT, {**INCUMBENT, "WD": 0.7}) == pytest.approx(0.5)
    # A tenfold LR change is a quarter of the log range [1e-4, 1].
    assert sdk.distance(s, INCUMBENT, {**INCUMBENT, "LR": 0.1}) == pytest.approx(0.25)


def test_snap_keeps_values_valid() -> None:
    knobs = sdk.knobs(state())
    assert sdk.snap(knobs["BATCH"], 5000.0) == 4096
    assert sdk.snap(knobs["BATCH"], 1e9) == 2**16
    assert sdk.snap(knobs["DEPTH"], 1.2) == 2
    for name, value in (("BATCH", 3000.0), ("DEPTH", 9.6), ("LR", 0.123456)):
        SPACE.get(name).check(sdk.snap(knobs[name], value))


def test_step_moves_powers_of_two_by_at_least_one_octave() -> None:
    batch = sdk.knobs(state())["BATCH"]
    assert sdk.step(batch, 4096, 0.01, 1.0) == 8192
    assert sdk.step(batch, 4096, 0.01, -1.0) == 2048


# -- each built-in mechanism --------------------------------------------------------------

def test_tabu_rejects_a_near_repeat_and_accepts_a_real_move() -> None:
    tabu = TabuSearch()
    s = state()
    tabu.observe(trial(1, {"LR": 0.02}), s)
    verdict = tabu.filter(proposal(LR=0.0205), s)
    assert verdict["action"] == "reject" and "trial 1" in verdict["reason"]
    assert tabu.filter(proposal(LR=0.2), s) == sdk.accept()
    assert "trials 1" in tabu.context(s)


def test_tabu_seeded_from_history_rejects_a_revisit_at_the_proposers_step() -> None:
    """Activated mid-run, it knows the trials before it; the radius follows each
    proposal's step, so both a careful and a bold proposer's revisits are caught."""
    tabu = TabuSearch()
    s = state([trial(1, {"LR": 0.0104}), trial(2, {"LR": 0.1}), trial(3, {"WD": 0.3})],
              index=4)
    small = tabu.filter(proposal(LR=0.0105), s)  # a 0.5 % step next to trial 1
    assert small["action"] == "reject" and "trial 1" in small["reason"]
    bold = tabu.filter(proposal(LR=0.09), s)  # a quarter of the range, next to trial 2
    assert bold["action"] == "reject" and "trial 2" in bold["reason"]
    assert tabu.filter(proposal(LR=0.001), s) == sdk.accept()  # the other way
    # The bandit's smallest step (0.02 of a range) from the incumbent is no revisit;
    # the old fixed radius of 0.03 rejected it against the incumbent's own trial.
    lr = sdk.knobs(s)["LR"]
    step = sdk.step(lr, INCUMBENT["LR"], SCALES[0], 1.0)
    assert tabu.filter(proposal(LR=step), state([trial(0, {})], index=1)) == sdk.accept()
    assert tabu.filter(proposal(), s)["action"] == "reject"  # the incumbent again
    assert tabu.seen == 3 and len(tabu.tabu) == 3


def test_tabu_forgets_after_its_tenure() -> None:
    tabu = TabuSearch(tenure=2)
    s = state()
    for i, lr in enumerate((0.02, 0.05, 0.09), start=1):
        tabu.observe(trial(i, {"LR": lr}), s)
    assert tabu.filter(proposal(LR=0.02), s)["action"] == "accept"
    assert tabu.filter(proposal(LR=0.09), s)["action"] == "reject"


def test_crash_memory_rejects_only_near_crashed_configs() -> None:
    memory = CrashMemory()
    s = state()
    memory.observe(trial(1, {"DEPTH": 16}, status="crash"), s)
    memory.observe(trial(2, {"DEPTH": 3}, status="discard"), s)
    verdict = memory.filter(proposal(DEPTH=16), s)
    assert verdict["action"] == "reject" and "RuntimeError: boom" in verdict["reason"]
    assert memory.filter(proposal(DEPTH=3), s)["action"] == "accept"
    assert "DEPTH" in memory.context(s)


def test_crash_memory_seeded_from_history_rejects_the_crash_side_only() -> None:
    """No radius: rejected when the nearest known configuration crashed. A proposal the
    validator refused (ProposalError) never ran, so it is no crash."""
    memory = CrashMemory()
    refused = {**trial(3, {"DEPTH": 9}, status="crash"), "crash": "ProposalError: bad"}
    s = state([trial(1, {"DEPTH": 14}, status="crash"), trial(2, {"DEPTH": 11}), refused],
              index=4)
    assert memory.filter(proposal(DEPTH=13), s)["action"] == "reject"  # nearer 14 than 11
    assert memory.filter(proposal(DEPTH=12), s)["action"] == "accept"  # nearer 11
    assert memory.filter(proposal(DEPTH=9), s)["action"] == "accept"
    assert [c["index"] for c in memory.crashes] == [1]


def test_bandit_tries_every_scale_then_prefers_the_rewarded_one() -> None:
    bandit = StepBandit()
    s = state()
    assert [bandit.choose() for _ in range(1)] == [0]
    lr_unit = sdk.unit(sdk.knobs(s)["LR"], 0.01)
    for arm, scale in enumerate(SCALES):
        value = sdk.from_unit(sdk.knobs(s)["LR"], lr_unit + scale)
        val = 0.98 if arm == 2 else 1.01  # only the third scale ever improves
        for i in range(3):
            bandit.observe(trial(10 * arm + i, {"LR": value}, val=val), s)
    assert bandit.pulls == [3, 3, 3, 3]
    assert bandit.choose() == 2
    [suggestion] = bandit.suggest(s)
    assert "scale 0.15" in suggestion["description"]
    for name, value in suggestion["changes"].items():
        SPACE.get(name).check(value)


def test_bandit_gives_no_reward_to_crashes() -> None:
    bandit = StepBandit()
    s = state()
    bandit.observe(trial(1, {"WD": 0.3}, status="crash"), s)
    assert sum(bandit.pulls) == 1 and sum(bandit.reward) == 0.0


def test_latin_hypercube_covers_each_stratum_of_the_rarest_knobs() -> None:
    lhs = LatinHypercube(width=2, points=4)
    s = state()
    for i in range(3):
        lhs.observe(trial(i, {"DEPTH": 9, "LR": 0.02, "BATCH": 8192}), s)
    assert lhs.rarest(s) == ["PATTERN", "WD"]
    points = lhs.suggest(s)
    wd = sorted(p["changes"]["WD"] for p in points if "WD" in p["changes"])
    assert len(wd) == 4
    assert sorted(math.floor(v * 4) for v in wd) == [0, 1, 2, 3]  # one per stratum
    assert all(p["changes"].get("PATTERN", "L") == "L" for p in points)


def test_plateau_restarts_from_the_incumbent_after_patience() -> None:
    plateau = PlateauRestart(patience=3)
    s = state()
    for i in range(2):
        plateau.observe(trial(i, {"WD": 0.5}), s)
    assert plateau.context(s) == "" and plateau.suggest(s) == []
    plateau.observe(trial(3, {"WD": 0.6}), s)
    assert "no improvement in the last 3" in plateau.context(s)
    [restart] = plateau.suggest(s)
    assert len(restart["changes"]) == 3
    assert plateau.since_keep == 0 and plateau.restarts == 1
    plateau.observe(trial(4, {"WD": 0.6}, status="keep", val=0.9), s)
    assert plateau.since_keep == 0


def test_plateau_fires_within_a_level2_window_of_four() -> None:
    """Seeded from the history it is shown: a stall before activation counts, and the
    patience follows the gaps between keeps (here every 2 trials -> patience 2)."""
    keeps = [trial(i, {"WD": 0.1 * i}, status="keep" if i % 2 == 0 else "discard",
                   val=1.0 - 0.01 * i) for i in range(7)]
    fresh = PlateauRestart()
    assert fresh.suggest(state(keeps, index=7)) == []  # trial 6 was a keep
    plateau = PlateauRestart()
    stalled = [*keeps, trial(7, {"WD": 0.9}), trial(8, {"WD": 0.8})]
    [restart] = plateau.suggest(state(stalled, index=9))
    assert plateau.patience() == 2 and "restart 1" in restart["description"]
    # With no keep gaps known, a stall of 3 (less than a window of 4) fires.
    quiet = PlateauRestart()
    window = [trial(0, {}, status="keep", val=1.0)] + [trial(i, {"WD": 0.1 * i})
                                                       for i in range(1, 4)]
    assert quiet.patience() == 3 and quiet.suggest(state(window, index=4))


def test_elite_crossover_crosses_two_distinct_elites_never_one_chain() -> None:
    cross = EliteCrossover(children=2)
    chain = [trial(0, {}, status="keep", val=1.0),
             trial(1, {"DEPTH": 10}, status="keep", val=0.99),
             trial(2, {"DEPTH": 10, "WD": 0.5}, status="keep", val=0.98)]
    assert cross.pairs(state(chain, index=3)) == []  # the kept trials are one chain
    assert cross.suggest(state(chain, index=3)) == []
    assert cross.context(state(chain, index=3)) == ""
    side = trial(3, {"LR": 0.05, "PATTERN": "L"}, val=0.985)  # a near miss, other knobs
    s = state([*chain, side, trial(4, {"DEPTH": 3}, val=1.2)], index=5,
              incumbent={**INCUMBENT, "DEPTH": 10, "WD": 0.5})
    children = cross.suggest(s)
    assert children and all("(discard)" in c["description"] for c in children)
    parents = {json.dumps({**INCUMBENT, **t["changes"]}, sort_keys=True)
               for t in [*chain, side]}
    for child in children:
        config = {**s["incumbent"], **child["changes"]}
        assert json.dumps(config, sort_keys=True) not in parents  # a new point
        assert config["DEPTH"] in (8, 10)  # never the bad trial 4's value
    assert "3" in cross.context(s)


def test_noop_runs_every_hook_and_changes_nothing() -> None:
    noop = NoOp()
    s = state()
    assert noop.context(s) == ""
    assert noop.filter(proposal(WD=0.4), s) == sdk.accept()
    assert noop.suggest(s) == []
    noop.observe(trial(1, {"WD": 0.4}), s)
    assert noop.save_state() == {"calls": 4}


@pytest.mark.parametrize("cls", [TabuSearch, CrashMemory, StepBandit, LatinHypercube,
                                 PlateauRestart, NoOp])
def test_state_round_trips_through_json(cls: type[Any]) -> None:
    first = cls()
    s = state()
    for i in range(4):
        first.observe(trial(i, {"WD": 0.1 * i}, status=("keep", "crash", "discard")[i % 3]), s)
    saved = json.loads(json.dumps(first.save_state()))
    second = cls()
    second.load_state(saved)
    assert second.save_state() == first.save_state()


def test_every_library_mechanism_passes_the_static_gate() -> None:
    for name in library.names():
        verdict = static_check(library.source(name))
        assert verdict.passed, (name, verdict.reason)


def test_unknown_library_name_says_which_exist() -> None:
    with pytest.raises(KeyError, match="tabu"):
        library.source("nope")
