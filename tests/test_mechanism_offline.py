"""The built-in mechanisms act offline from their first call, through the real host.

Each is activated mid-run and shown only the loop state a run would give it - the
history of the trials before it, never an observe - and must still act: tabu rejects a
revisit at a local proposer's step, crash memory rejects the crash side, plateau_restart
fires within a Level-2 window of 4, elite_crossover crosses two distinct elites. The
records asserted are the ones the loop stores.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.records import Effect
from controller.research.level2.runtime import MechanismSet
from controller.sandbox.backend import SandboxBackend
from mechanisms import library
from mechanisms.wire import LoopState, MechanismProposal, TrialView

pytestmark = pytest.mark.docker

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("WD", "float", 0.0, 1.0),
    Knob("PATTERN", "choice", choices=("SSSL", "L")),
))
BASE: dict[str, Any] = {"DEPTH": 8, "LR": 0.01, "WD": 0.2, "PATTERN": "SSSL"}
Status = Literal["keep", "discard", "crash"]


def _history() -> tuple[TrialView, ...]:
    """A greedy chain (0 -> 1 -> 2 kept), a near miss on other knobs, a crash, then
    three trials without a keep: what a run stalled before Level 2 looks like."""
    rows: list[tuple[dict[str, Any], Status, float | None]] = [
        ({}, "keep", 1.0), ({"DEPTH": 10}, "keep", 0.99),
        ({"DEPTH": 10, "WD": 0.15}, "keep", 0.98),
        ({"DEPTH": 10, "WD": 0.15, "LR": 0.02, "PATTERN": "L"}, "discard", 0.985),
        ({"DEPTH": 15, "WD": 0.15}, "crash", None),
        ({"DEPTH": 10, "WD": 0.15, "LR": 0.0104}, "discard", 0.99),
        ({"DEPTH": 10, "WD": 0.12}, "discard", 0.983)]
    return tuple(TrialView(i, changes, {**BASE, **changes}, status, val, 0.98,
                           crash="MemoryError: CUDA out of memory" if status == "crash" else "")
                 for i, (changes, status, val) in enumerate(rows))


def test_allow_library_mechanisms_act_from_the_history_alone(
        executor: SandboxBackend) -> None:
    incumbent = {**BASE, "DEPTH": 10, "WD": 0.15}
    state = LoopState(SPACE, incumbent, 0.98, 7, 5, _history())
    names = ("crash_memory", "tabu", "plateau_restart", "elite_crossover")
    with MechanismSet(executor, SPACE) as mechanisms:
        for name in names:
            assert mechanisms.activate(name, library.source(name)).failure is None
        # A local proposer's small LR step, next to trial 5's: a revisit.
        revisit = mechanisms.filter(MechanismProposal({"LR": 0.0105}, "local step"), state)
        assert revisit.value is None
        [tabu] = [r for r in revisit.records if r.mechanism == "tabu"]
        assert tabu.effect is Effect.REJECTED and "trial 5" in tabu.detail
        deep = mechanisms.filter(MechanismProposal({"DEPTH": 14}, "deeper"), state)
        assert deep.value is None
        [crash] = [r for r in deep.records if r.mechanism == "crash_memory"]
        assert crash.effect is Effect.REJECTED and "trial 4" in crash.detail
        fresh = mechanisms.filter(MechanismProposal({"LR": 0.004}, "the other way"), state)
        assert fresh.value is not None
        assert all(r.effect is Effect.ACCEPTED for r in fresh.records)
        found = mechanisms.suggest(state)
        [restart] = [s.proposal for s in found.value if s.mechanism == "plateau_restart"]
        assert "plateau restart 1" in restart.description
        first, second = [s.proposal for s in found.value if s.mechanism == "elite_crossover"]
        assert "trials 2 (keep) and 3 (discard)" in first.description  # not 1 and 2
        assert "trials 6 (discard) and 3 (discard)" in second.description
        for cross in (first, second):
            assert {**incumbent, **cross.changes} not in [t.config for t in _history()]
        assert mechanisms.disabled == {}
