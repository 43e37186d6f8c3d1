"""Mechanisms through the real sandboxed host: gates, recorded effects, resume.

These prove wiring, not just loading: every assertion is on the records the loop will
store, produced by hook calls that crossed the JSON-lines protocol into a container.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any, Literal

import pytest

from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.gates import gate_and_activate
from controller.research.level2.records import Effect, HookRecord, summarize_hook_calls
from controller.research.level2.runtime import MechanismSet, MechanismSettings
from controller.sandbox.backend import SandboxBackend
from mechanisms import library
from mechanisms.wire import LoopState, MechanismProposal, TrialView
from trainer.knobs import KnobValue

pytestmark = pytest.mark.docker
Status = Literal["keep", "discard", "crash"]

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("BATCH", "int", 2**10, 2**16, power_of_two=True),
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("WD", "float", 0.0, 1.0),
    Knob("PATTERN", "choice", choices=("SSSL", "L")),
))
INCUMBENT: dict[str, Any] = {"DEPTH": 8, "BATCH": 4096, "LR": 0.01, "WD": 0.2, "PATTERN": "SSSL"}

# Rejects deep models, halves large learning rates, suggests one step, prints noise.
GOOD = textwrap.dedent('''
    from mechanisms import sdk

    class Shaper:
        def __init__(self):
            self.seen = 0

        def context(self, state):
            print("noise on stdout must not break the protocol")
            return f"Shaper has seen {self.seen} trials; keep DEPTH at most 12."

        def filter(self, proposal, state):
            if proposal["changes"].get("DEPTH", 0) > 12:
                return sdk.reject("DEPTH over 12")
            lr = proposal["changes"].get("LR")
            if lr is not None and lr > 0.1:
                new = dict(proposal["changes"], LR=sdk.snap(sdk.knobs(state)["LR"], lr / 2))
                return sdk.replace(sdk.proposal(new, "halved LR"), "LR too high")
            return sdk.accept()

        def suggest(self, state):
            knob = sdk.knobs(state)["WD"]
            value = sdk.step(knob, state["incumbent"]["WD"], 0.1, 1.0)
            return [sdk.proposal({"WD": value}, "shaper step")]

        def observe(self, trial, state):
            self.seen += 1

        def save_state(self):
            return {"seen": self.seen}

        def load_state(self, data):
            self.seen = data["seen"]
''')


def loop_state(index: int, history: tuple[TrialView, ...] = (),
               incumbent: dict[str, Any] | None = None) -> LoopState:
    return LoopState(SPACE, incumbent or INCUMBENT, 1.0, index, 11, history)


def effects(records: list[HookRecord], name: str) -> list[Effect]:
    return [r.effect for r in records if r.mechanism == name]


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_allow_good_mechanism_passes_gates_and_changes_proposals(
        executor: SandboxBackend, runtime: str) -> None:
    with MechanismSet(executor, SPACE, MechanismSettings(runtime=runtime)) as mechanisms:
        admission = gate_and_activate(mechanisms, "shaper", GOOD)
        assert admission.passed, admission.verdicts
        assert [v.gate for v in admission.verdicts] == ["static", "contract", "activation"]
        noop = mechanisms.activate("noop", library.source("noop"))
        assert noop.failure is None, noop.failure
        state = loop_state(1)

        context = mechanisms.context(state)
        assert "[shaper] Shaper has seen 0 trials" in context.value
        deep = mechanisms.filter(MechanismProposal({"DEPTH": 14}, "deeper"), state)
        assert deep.value is None
        high = mechanisms.filter(MechanismProposal({"LR": 0.4, "WD": 0.3}, "hotter"), state)
        assert high.value == MechanismProposal({"LR": 0.2, "WD": 0.3}, "halved LR")
        fine = mechanisms.filter(MechanismProposal({"WD": 0.3}, "fine"), state)
        assert fine.value == MechanismProposal({"WD": 0.3}, "fine")
        suggested = mechanisms.suggest(state)
        assert [(s.mechanism, s.proposal.description) for s in suggested.value] == [
            ("shaper", "shaper step")]
        observed = mechanisms.observe(TrialView(1, {"WD": 0.3}, {**INCUMBENT, "WD": 0.3},
                                                "discard", 1.01, 1.0), state)

        records = (context.records + deep.records + high.records + fine.records
                   + suggested.records + observed.records)
        assert effects(records, "shaper") == [
            Effect.CONTEXT_ADDED, Effect.REJECTED, Effect.REPLACED, Effect.ACCEPTED,
            Effect.SUGGESTED, Effect.OBSERVED]
        # The rejected proposal never reached the no-op; the other hooks all did.
        assert effects(records, "noop") == [
            Effect.NO_EFFECT, Effect.ACCEPTED, Effect.ACCEPTED, Effect.NO_EFFECT,
            Effect.OBSERVED]
        summary = summarize_hook_calls(records, mechanisms.active)
        assert summary["shaper"].injected and summary["shaper"].effective == 4
        assert summary["noop"].calls == 5 and not summary["noop"].injected
        assert "Shaper has seen 1 trials" in mechanisms.context(loop_state(2)).value


def test_allow_every_library_mechanism_runs_in_the_sandbox(executor: SandboxBackend) -> None:
    """All built-ins in one set over a short synthetic run; each but the no-op changes
    something, which the summary reports as injected."""
    with MechanismSet(executor, SPACE) as mechanisms:
        for name in library.names():
            record = mechanisms.activate(name, library.source(name))
            assert record.failure is None, record.failure
        history: list[TrialView] = []
        records: list[HookRecord] = []
        values: list[tuple[int, float | None, Status]] = [
            (14, 0.99, "keep"), (3, None, "crash"), (9, 1.2, "discard"), (10, 1.0, "discard"),
            (11, 1.01, "discard"), (12, 1.02, "discard"), (7, 1.03, "discard")]
        incumbent = dict(INCUMBENT)  # a keep moves it, as in the loop (direct_search needs it)
        for index, (depth, val, status) in enumerate(values, start=1):
            state = loop_state(index, tuple(history), incumbent)
            records += mechanisms.context(state).records + mechanisms.suggest(state).records
            records += mechanisms.filter(MechanismProposal({"DEPTH": depth}, "step"), state).records
            trial = TrialView(index, {"DEPTH": depth, "LR": 0.01 * (1 + index / 10)},
                              {**INCUMBENT, "DEPTH": depth, "LR": 0.01 * (1 + index / 10)},
                              status, val, 1.0, crash="boom" if status == "crash" else "")
            records += mechanisms.observe(trial, state).records
            history.append(trial)
            if status == "keep":
                incumbent = dict(trial.config)
        # Two trials that move DEPTH alone from the incumbent (14, 0.99): a convex slice,
        # what parabolic_interpolation fits.
        for depth, val in ((10, 1.02), (12, 1.0)):
            config = {**incumbent, "DEPTH": depth}
            history.append(TrialView(len(history) + 1, {"DEPTH": depth}, config, "discard",
                                     val, 1.0))
        final = loop_state(len(history) + 1, tuple(history), incumbent)
        records += mechanisms.filter(MechanismProposal({"DEPTH": 3, "LR": 0.0130}, "crash again"),
                                     final).records
        records += mechanisms.suggest(final).records
        assert mechanisms.disabled == {}
        summary = summarize_hook_calls(records, library.names())
        for name in library.names():
            assert summary[name].calls > 0, name
            assert summary[name].injected == (name != "noop"), (name, summary[name])


SEQUENCE: list[tuple[dict[str, KnobValue], float | None, Status]] = [
    ({"LR": 0.02}, 0.99, "keep"), ({"WD": 0.5}, 1.01, "discard"), ({"DEPTH": 12}, None, "crash"),
    ({"LR": 0.05}, 1.02, "discard"), ({"BATCH": 8192}, 1.03, "discard"),
    ({"WD": 0.1}, 1.04, "discard"), ({"LR": 0.03}, 1.05, "discard"),
    ({"DEPTH": 12}, None, "crash")]


def _drive(mechanisms: MechanismSet, steps: range) -> list[tuple[Any, ...]]:
    transcript: list[tuple[Any, ...]] = []
    history = tuple(TrialView(i + 1, c, {**INCUMBENT, **c}, s, v, 1.0)
                    for i, (c, v, s) in enumerate(SEQUENCE[:steps.start]))
    for i in steps:
        changes, val, status = SEQUENCE[i]
        state = loop_state(i + 1, history)
        outcomes = [mechanisms.context(state).records, mechanisms.suggest(state).records,
                    mechanisms.filter(MechanismProposal(changes, "p"), state).records]
        transcript += [(r.mechanism, r.hook, r.effect, r.detail, r.proposals)
                       for records in outcomes for r in records]
        trial = TrialView(i + 1, changes, {**INCUMBENT, **changes}, status, val, 1.0)
        mechanisms.observe(trial, state)
        history += (trial,)
    return transcript


STATEFUL = ("step_bandit", "plateau_restart", "crash_memory", "tabu")


def test_state_round_trip_resumes_identically(executor: SandboxBackend) -> None:
    """Closed after 4 trials and restarted from save_state(), the set answers the
    remaining trials exactly as one that never stopped."""
    stateful = STATEFUL
    with MechanismSet(executor, SPACE) as straight:
        for name in stateful:
            straight.activate(name, library.source(name))
        expected = _drive(straight, range(len(SEQUENCE)))
    with MechanismSet(executor, SPACE) as first:
        for name in stateful:
            first.activate(name, library.source(name))
        before = _drive(first, range(4))
        saved = first.save_states()
    assert set(saved.value) == set(stateful)
    with MechanismSet(executor, SPACE) as resumed:
        for name in stateful:
            record = resumed.activate(name, library.source(name), saved.value[name])
            assert record.failure is None, record.failure
        after = _drive(resumed, range(4, len(SEQUENCE)))
    assert before + after == expected
    # The restored crash memory rejects the repeat of trial 3's crash.
    assert ("crash_memory", "filter", Effect.REJECTED) in [e[:3] for e in after]


def test_session_start_and_call_latency_are_small(executor: SandboxBackend) -> None:
    with MechanismSet(executor, SPACE) as mechanisms:
        record = mechanisms.activate("noop", library.source("noop"))
        assert record.seconds < 5.0, record
        state = loop_state(1)
        started = time.monotonic()
        for _ in range(20):
            mechanisms.filter(MechanismProposal({"WD": 0.3}, "x"), state)
        assert (time.monotonic() - started) / 20 < 0.1
