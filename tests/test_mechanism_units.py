"""The wire shapes, the static gate and the record summary, in-process (no Docker)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.contract import synthetic_states
from controller.research.level2.gates import static_check
from controller.research.level2.records import Effect, HookRecord, summarize_hook_calls
from mechanisms.wire import FilterVerdict, LoopState, MechanismProposal, TrialView, WireError

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("BETAS", "choice", choices=((0.8, 0.95), (0.9, 0.99))),
))

GOOD = '''
from mechanisms import sdk

class Good:
    def __init__(self):
        self._seen = 0

    def filter(self, proposal, state):
        self._seen += 1
        return sdk.accept()
'''


def test_state_round_trips_with_tuple_choices() -> None:
    state = LoopState(SPACE, {"DEPTH": 8, "LR": 0.01, "BETAS": (0.8, 0.95)}, 1.0, 3, 5, (
        TrialView(1, {"BETAS": (0.9, 0.99)}, {"DEPTH": 8, "LR": 0.01, "BETAS": (0.9, 0.99)},
                  "crash", None, 1.0, "x", "OOM"),))
    raw = state.to_json()
    assert raw["incumbent"]["BETAS"] == [0.8, 0.95]
    assert LoopState.from_json(raw) == state


def test_proposal_from_json_accepts_valid_changes() -> None:
    parsed = MechanismProposal.from_json({"changes": {"BETAS": [0.9, 0.99], "DEPTH": 9},
                                 "description": "d"}, SPACE)
    assert parsed == MechanismProposal({"BETAS": (0.9, 0.99), "DEPTH": 9}, "d")


@pytest.mark.parametrize(("raw", "path"), [
    ({"changes": {"NOPE": 1}}, "proposal.changes.NOPE"),
    ({"changes": {"DEPTH": 99}}, "proposal.changes.DEPTH"),
    ({"changes": {"DEPTH": 8.5}}, "proposal.changes.DEPTH"),
    ({"changes": {}}, "proposal.changes.changes"),
    ({"changes": {"DEPTH": 3}, "extra": 1}, "proposal"),
    ([1, 2], "proposal"),
    ({"changes": {"LR": 0.1}, "description": 5}, "proposal.description"),
])
def test_deny_malformed_proposal(raw: Any, path: str) -> None:
    with pytest.raises(WireError) as info:
        MechanismProposal.from_json(raw, SPACE)
    assert info.value.path == path


@pytest.mark.parametrize("raw", [
    {"action": "maybe"}, {"action": "reject"}, {"action": "reject", "reason": 3},
    {"action": "replace", "proposal": {"changes": {"DEPTH": 1}}}, None,
])
def test_deny_malformed_verdict(raw: Any) -> None:
    with pytest.raises(WireError):
        FilterVerdict.from_json(raw, SPACE)


def test_static_gate_allows_a_plain_mechanism() -> None:
    verdict = static_check(GOOD)
    assert verdict.passed, verdict.reason
    assert "Good defines filter" in verdict.reason


@pytest.mark.parametrize(("source", "reason"), [
    ("class M(:\n  pass", "not valid Python"),
    ("import socket\nclass M:\n def context(self, s): return ''", "'socket'"),
    ("import os.path\nclass M:\n def context(self, s): return ''", "'os.path'"),
    ("from subprocess import run\nclass M:\n def context(self, s): return ''", "subprocess"),
    ("from . import x\nclass M:\n def context(self, s): return ''", "from '.'"),
    ("class M:\n def context(self, s): return open('/etc/passwd').read()", "'open'"),
    ("class M:\n def context(self, s): return eval('1')", "'eval'"),
    ("class M:\n def context(self, s): return __import__('os').name", "'__import__'"),
    ("class M:\n def context(self, s): return ().__class__.__name__", "'__class__'"),
    ("import random\nclass M:\n def context(self, s): return random._os.name", "'_os'"),
    ("class M:\n def context(self, s): return getattr(s, 'x')", "'getattr'"),
    ("class A:\n def context(self, s): return ''\nclass B:\n def suggest(self, s): return []",
     "exactly one class"),
    ("x = 1", "exactly one class"),
    ("class M:\n def observe(self, t, s): pass", "could never change anything"),
])
def test_deny_static(source: str, reason: str) -> None:
    verdict = static_check(source)
    assert not verdict.passed
    assert reason in verdict.reason, verdict.reason


def test_static_gate_reports_the_syntax_error_location() -> None:
    verdict = static_check("class M:\n    def context(self, s)\n        return ''\n")
    assert "line 2" in verdict.reason and "SyntaxError" in verdict.traceback


def test_synthetic_states_are_valid_and_seeded() -> None:
    first, second = synthetic_states(SPACE, 3, 3), synthetic_states(SPACE, 3, 3)
    assert first == second
    assert [len(s.history) for s in first] == [0, 3, 6]
    for state in first:
        for trial in state.history:
            SPACE.check(trial.changes)
        assert LoopState.from_json(state.to_json()) == state


def _record(name: str, hook: str, effect: Effect) -> HookRecord:
    return HookRecord(name, hook, 1, 0.001, effect)


def test_summary_counts_effective_calls_and_flags_the_uninjected() -> None:
    records = [_record("tabu", "filter", Effect.ACCEPTED),
               _record("tabu", "filter", Effect.REJECTED),
               _record("noop", "context", Effect.NO_EFFECT),
               _record("noop", "observe", Effect.OBSERVED),
               _record("bad", "context", Effect.FAILED)]
    summary = summarize_hook_calls(records, mechanisms=["tabu", "noop", "bad", "never_called"])
    assert (summary["tabu"].calls, summary["tabu"].effective) == (2, 1)
    assert summary["tabu"].injected
    assert summary["noop"].calls == 2 and not summary["noop"].injected
    assert summary["bad"].failures == 1 and not summary["bad"].injected
    assert summary["never_called"].calls == 0 and not summary["never_called"].injected
