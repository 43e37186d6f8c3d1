"""The behavioural contract test of a mechanism (EvoX-style: a new strategy must
behave before it may replace the old one).

`synthetic_states` makes a few seeded loop states from the real search space - an
empty history, then histories with keeps, discards and crashes - and `exercise` calls
every hook the mechanism defines on them through the real sandboxed host, exactly as
the loop will, returning a transcript of what each call did (for the determinism
check) or the first failure.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from controller.research.level1.space import SearchSpace
from controller.research.level2.records import Failure, FailureReason
from controller.research.level2.runtime import MechanismSet
from mechanisms import sdk
from mechanisms.wire import LoopState, MechanismProposal, TrialView, space_to_json
from trainer.knobs import KnobValue

STATUSES: tuple[Literal["keep", "discard", "crash"], ...] = ("keep", "discard", "crash",
                                                            "discard")


def _random_changes(space_json: dict[str, Any], incumbent: dict[str, Any],
                    rnd: random.Random) -> dict[str, KnobValue]:
    knobs = space_json["knobs"]
    changes: dict[str, KnobValue] = {}
    for knob in rnd.sample(knobs, min(len(knobs), rnd.randint(1, 2))):
        if knob["kind"] == "choice":
            value = rnd.choice(knob["choices"])
            changes[knob["name"]] = tuple(value) if isinstance(value, list) else value
        else:
            changes[knob["name"]] = sdk.from_unit(knob, rnd.random())
    return {k: v for k, v in changes.items() if incumbent.get(k) != v} or changes


def synthetic_states(space: SearchSpace, seed: int, count: int) -> list[LoopState]:
    """`count` states with growing histories; index 0 has an empty history."""
    rnd = random.Random(seed)
    space_json = space_to_json(space)
    incumbent: dict[str, KnobValue] = {
        k["name"]: (k["choices"][0] if k["kind"] == "choice" else sdk.from_unit(k, 0.5))
        for k in space_json["knobs"]}
    incumbent = {k: tuple(v) if isinstance(v, list) else v for k, v in incumbent.items()}
    best = 1.0
    history: list[TrialView] = []
    states = []
    for i in range(count):
        states.append(LoopState(space, dict(incumbent), best, len(history) + 1, seed,
                                tuple(history)))
        for _ in range(3):
            changes = _random_changes(space_json, incumbent, rnd)
            status = STATUSES[len(history) % len(STATUSES)]
            val = None if status == "crash" else best + rnd.uniform(-0.02, 0.03)
            if status == "keep" and val is not None:
                val = best - rnd.uniform(0.001, 0.01)
            history.append(TrialView(len(history) + 1, changes, {**incumbent, **changes},
                                     status, val, best, f"synthetic trial {i}",
                                     "RuntimeError: synthetic crash" if status == "crash"
                                     else ""))
            if status == "keep" and val is not None:
                incumbent, best = {**incumbent, **changes}, val
    return states


def _line(record: Any) -> tuple[Any, ...]:
    return (record.hook, record.effect.value, record.detail, record.proposals)


def exercise(mechanisms: MechanismSet, name: str, source: str, seed: int,
             count: int) -> tuple[list[tuple[Any, ...]], Failure | None]:
    """Activate `source` and call each of its hooks on synthetic states."""
    start = mechanisms.activate(name, source)
    if start.failure is not None:
        return [], start.failure
    hooks = mechanisms.hooks(name)
    rnd = random.Random(seed + 1)
    transcript: list[tuple[Any, ...]] = []
    for state in synthetic_states(mechanisms.space, seed, count):
        space_json = space_to_json(state.space)
        proposal = MechanismProposal(_random_changes(space_json, state.incumbent, rnd), "synthetic")
        trial = TrialView(state.trial_index, proposal.changes,
                          {**state.incumbent, **proposal.changes}, "discard",
                          (state.best_val_bpb or 1.0) + 0.01, state.best_val_bpb)
        calls = [mechanisms.context(state).records, mechanisms.filter(proposal, state).records,
                 mechanisms.suggest(state).records, mechanisms.observe(trial, state).records]
        for records in calls:
            for record in records:
                if record.failure is not None:
                    return transcript, record.failure
                transcript.append(_line(record))
    if "save_state" in hooks:
        saved = mechanisms.save_states()
        failure = next((r.failure for r in saved.records if r.failure), None)
        if failure is not None:
            return transcript, failure
        data = saved.value.get(name)
        transcript.append(("save_state", data))
        if "load_state" in hooks:
            failure = _round_trip(mechanisms, name, data)
            if failure is not None:
                return transcript, failure
    return transcript, None


def _round_trip(mechanisms: MechanismSet, name: str, data: Any) -> Failure | None:
    """load_state(save_state()) must leave save_state() unchanged."""
    loaded = mechanisms.load_states({name: data})
    failure = next((r.failure for r in loaded.records if r.failure), None)
    if failure is not None:
        return failure
    again = mechanisms.save_states()
    failure = next((r.failure for r in again.records if r.failure), None)
    if failure is not None:
        return failure
    if again.value.get(name) != data:
        return Failure(name, "load_state", FailureReason.INVALID_RESULT,
                       "save_state() after load_state(saved) differs from saved")
    return None
