"""Credit and judgement in real runs on the surrogate task, mechanisms in real sandboxes:
only the mechanism whose suggestion became the trial is credited, a candidate on trial
gets its WITH trials even against a kept suggest-mechanism (whose OOMs are then never
blamed on it), a Level-1.5 freeze skips a suggestion instead of disabling its
mechanism, and the report tells idle from never called."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from controller.research.level2 import report as mechanism_report
from controller.research.level2.report import finding
from controller.research.settings import Budgets, InitialMechanism, OuterSettings, RunSettings
from controller.sandbox.backend import SandboxBackend
from controller.store.mechanisms import ACTIVE, MechanismLog, MechanismRow
from controller.store.records import EventKind, RunState, TrialStatus
from mechanisms.interface import ACTING_HOOKS
from tests.fake_llm_server import FakeLLMServer
from tests.test_level2_mechanisms import (
    _mechanism,
    assert_verdict_is_the_stated_one,
    designer,
    surrogate_loop,
)
from tests.test_loop_harness import TEST_KEY, llm_settings

pytestmark = pytest.mark.docker

STEADY = _mechanism('''
    class Steady:
        def suggest(self, state):
            i = state["trial_index"]
            return [{"changes": {"WARMDOWN_RATIO": round(0.3 + 0.02 * (i % 10), 4)},
                     "description": f"steady step {i}"}]
''')
OOMER = _mechanism('''
    class Oomer:
        def suggest(self, state):
            return [{"changes": {"DEPTH": 16, "ASPECT_RATIO": 128},
                     "description": "as big as it gets"}]
''')


def test_credit_goes_to_the_suggestion_that_ran_and_oom_is_not_blamed_on_the_candidate(
        tmp_path: Path, executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    _, responder = designer([("steady", "numerical schedules", STEADY)])
    with FakeLLMServer(responder=responder) as server:  # type: ignore[arg-type]
        settings = RunSettings(
            budgets=Budgets(max_trials=12), llm=llm_settings(server.anthropic_url),
            outer=OuterSettings(levels=("1", "2"), mechanism_source="llm", l2_every=2,
                                max_l2_rounds=1, suggest_every=2, code_retries=0,
                                mechanisms=(InitialMechanism("oomer", OOMER),)))
        loop, store = surrogate_loop(tmp_path, executor, settings)
        loop.run()
    run = store.get_run("run-l2")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 13, run.stop_reason
    trials = {t.index: t for t in store.trials("run-l2")}
    calls = store.mechanism_records("run-l2")
    rows = {r.name: r for r in store.mechanisms("run-l2")}
    steady = rows["steady"]
    assert steady.activated_at == 3 and steady.window_end == 10
    arms = MechanismLog(store).outer_state("run-l2", "arms:steady")
    assert arms is not None
    with_, without = set(arms["with"]), set(arms["without"])
    assert with_ | without >= set(range(3, 11)) and not with_ & without
    assert len(with_ & set(range(3, 11))) == 4  # one of each pair
    # The stored source names what ran; only that mechanism's call is effective.
    assert trials[0].proposal_source == "baseline"
    for t in trials.values():
        mine = [c for c in calls if c.trial == t.index and c.hook == "suggest"]
        for c in mine:
            ran = t.proposal_source == f"mechanism:{c.mechanism}"
            if c.effect in ("suggested", "offered"):
                assert (c.effect == "suggested") == ran, (t.index, c)
                assert c.effective == ran
    assert trials[2].proposal_source == "mechanism:oomer"
    assert trials[2].status is TrialStatus.CRASH
    for i in sorted(with_ & set(range(3, 11))):
        assert trials[i].proposal_source == "mechanism:steady", (i, trials[i])
        assert trials[i].status is not TrialStatus.CRASH
        if i % 2 == 0:  # on the cadence the kept oomer offered too, and lost the slot
            [oom] = [c for c in calls if c.trial == i and c.mechanism == "oomer"
                     and c.hook == "suggest"]
            assert oom.effect == "offered" and not oom.effective
    for i in sorted(without & set(range(3, 11))):
        assert not [c for c in calls if c.trial == i and c.mechanism == "steady"
                    and c.hook in ACTING_HOOKS], i
        expected = "mechanism:oomer" if i % 2 == 0 else "proposer"
        assert trials[i].proposal_source == expected, (i, trials[i])
    # Every OOM in the window is oomer's and sits in steady's WITHOUT arm.
    crashes = {i for i in range(3, 11) if trials[i].status is TrialStatus.CRASH}
    assert crashes and crashes <= without
    assert steady.score["test"].startswith("one-sided paired randomisation test")
    assert len(steady.score["pairs"]) == 4 and steady.score["effective"] == 4
    assert_verdict_is_the_stated_one(store, "run-l2", settings.search.seed, steady)
    # Each of oomer's OOMs is the WITHOUT half of a judged pair: it counts against the
    # arm without steady, never against steady.
    assert crashes <= {without for _, without in steady.score["pairs"]}
    summary = {s.row.name: s for s in mechanism_report.summaries(store, "run-l2")}
    assert summary["steady"].changed_trials == len(
        [t for t in trials.values() if t.proposal_source == "mechanism:steady"])


PINNER = _mechanism('''
    class Pinner:
        def suggest(self, state):
            i = state["trial_index"]
            return [{"changes": {"MATRIX_LR": 0.03}, "description": "pin lr"},
                    {"changes": {"WEIGHT_DECAY": round(0.1 + 0.01 * i, 3)},
                     "description": f"decay {i}"}]
''')
TALKER = _mechanism('''
    class Talker:
        def context(self, state):
            return "try a lower learning rate"
''')


def test_freeze_skips_a_suggestion_keeps_the_mechanism_and_idle_differs_from_uncalled(
        tmp_path: Path, executor: SandboxBackend) -> None:
    settings = RunSettings(budgets=Budgets(max_trials=7), outer=OuterSettings(
        suggest_every=1, mechanisms=(InitialMechanism("pinner", PINNER),
                                     InitialMechanism("noop"),
                                     InitialMechanism("talker", TALKER))))
    loop, store = surrogate_loop(tmp_path, executor, settings)

    def freeze(index: int) -> None:  # what Level 1.5's ConfigLoop does after a cycle
        if index == 3:
            loop.set_frozen(["MATRIX_LR"])

    loop.after_trial.append(freeze)
    loop.run()
    assert store.get_run("run-l2").state is RunState.SUCCEEDED
    trials = {t.index: t for t in store.trials("run-l2")}
    calls = store.mechanism_records("run-l2")
    rows = {r.name: r for r in store.mechanisms("run-l2")}
    assert rows["pinner"].status == ACTIVE and rows["pinner"].failure is None
    for i in (1, 2, 3):  # before the freeze its first suggestion ran
        assert trials[i].proposal_source == "mechanism:pinner"
        assert "pin lr" in trials[i].description
    for i in range(4, 8):  # after it the frozen one is skipped, the other one runs
        [rec] = [c for c in calls if c.trial == i and c.mechanism == "pinner"
                 and c.hook == "suggest"]
        assert rec.effect == "suggested" and rec.effective
        assert len(rec.skipped) == 1 and "MATRIX_LR" in rec.skipped[0]
        assert "frozen by Level 1.5" in rec.skipped[0]
        assert trials[i].proposal_source == "mechanism:pinner"
        assert "MATRIX_LR" not in trials[i].changes and f"decay {i}" in \
            trials[i].description
    summary = {s.row.name: s for s in mechanism_report.summaries(store, "run-l2")}
    assert summary["pinner"].finding == "changed 7 trial(s)" and summary["pinner"].skipped == 4
    assert summary["noop"].finding.startswith("ran, had nothing to do")
    assert summary["noop"].acting_calls > 0 and summary["noop"].effective == 0
    assert summary["talker"].finding == "never called"  # the local proposer reads no prompt
    report = mechanism_report.render(store, "run-l2")
    assert "NOT injected" not in report and "| never called |" in report
    assert "answers skipped, mechanism kept" in report


def test_no_round_starts_that_the_run_could_not_judge(
        tmp_path: Path, executor: SandboxBackend) -> None:
    settings = RunSettings(budgets=Budgets(max_trials=6), outer=OuterSettings(
        levels=("1", "2"), mechanism_source="library", l2_every=5))
    loop, store = surrogate_loop(tmp_path, executor, settings)
    loop.run()
    assert store.mechanisms("run-l2") == []
    notes = [e.payload["detail"] for e in store.events_after("run-l2", 0)
             if e.kind is EventKind.MECHANISM and e.payload["action"] == "round_skipped"]
    # Said once, whether the round was due by schedule or by a stall.
    assert len(notes) == 1 and notes[0].startswith("no new round: "), notes
    left = int(notes[0].split()[3])
    assert 0 < left < 8 and notes[0].endswith("a verdict needs a window of 8"), notes


def test_findings_of_the_report() -> None:
    row = MechanismRow("m", "library", "", status=ACTIVE, activated_at=6, window_end=13)
    assert finding(row, 3, 0, 8, True).startswith(
        "not judged: window too short (run ended at trial 8, its window to trial 13)")
    assert finding(replace(row, status="kept"), 3, 2, 20, True) == "changed 2 trial(s)"
    assert finding(replace(row, status="reverted"), 3, 0, 20, True).startswith(
        "ran, had nothing to do")
    assert finding(replace(row, status="reverted"), 0, 0, 20, True) == "never called"
    assert finding(replace(row, status="kept", activated_at=21), 0, 0, 20, True) == \
        "never called: activated after the last trial"
