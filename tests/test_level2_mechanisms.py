"""Level 2 inside real runs on the surrogate task: mechanisms run in sandboxes, their
hook calls are stored with the trials, bad ones are stopped at the right gate or
disabled at runtime while the run goes on, one that reaches for the network is stopped
by its sandbox, and each verdict is the one the stated test gives on the stored trials."""

from __future__ import annotations

import json
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from controller.llm.settings import LLMAccess
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.level1.run_proposer import build_run_provider
from controller.research.level2 import design, gates
from controller.research.level2 import report as mechanism_report
from controller.research.level2 import verdict as level2_verdict
from controller.research.outer import attach_outer_levels
from controller.research.settings import Budgets, OuterSettings, RunSettings
from controller.research.tasks.surrogate import SurrogateTask
from controller.sandbox.backend import SandboxBackend
from controller.store.artifacts import ArtifactStore
from controller.store.mechanisms import (
    DISABLED,
    GATE_REJECTED,
    KEPT,
    REVERTED,
    MechanismLog,
    MechanismRow,
)
from controller.store.records import EventKind, RunState
from controller.store.runs import RunStore
from mechanisms.interface import ACTING_HOOKS
from tests.fake_llm_server import FakeLLMServer, RecordedRequest, Reply, Script
from tests.test_loop_harness import TEST_KEY, llm_settings

pytestmark = pytest.mark.docker


def surrogate_loop(tmp_path: Path, executor: SandboxBackend, settings: RunSettings,
                   access: LLMAccess | None = None) -> tuple[InnerLoop, RunStore]:
    settings.validate()
    store = RunStore(tmp_path / "db.sqlite3")
    store.create_run("run-l2", settings.to_dict())
    stop = StopSignal()
    loop = InnerLoop("run-l2", settings, SurrogateTask(executor),
                     LocalPerturbation(settings.search.seed, settings.proposer), store,
                     ArtifactStore(tmp_path / "runs"), stop)
    access = access or LLMAccess().allowing(settings.llm.base_url)
    attach_outer_levels(loop, executor, lambda: build_run_provider(
        "run-l2", settings, store, access, stop.event))
    return loop, store


def stated_verdict(store: RunStore, run_id: str, seed: int,
                   row: MechanismRow) -> level2_verdict.MechanismVerdict:
    """The verdict the stated test gives on what the store holds: the arms the coins
    assigned, the trials' scores in the recorded sigma, and the WITH trials the
    candidate's hooks changed."""
    assert row.activated_at is not None and row.window_end is not None
    arms = MechanismLog(store).outer_state(run_id, f"arms:{row.name}")
    assert arms is not None, row.name
    with_ = [i for i in arms["with"] if i <= row.window_end]
    # The sigma the verdict used: without baseline seeds it is the spread of the values
    # the run had at the verdict, not at its end.
    scores, _, _ = level2_verdict.trial_scores(store.trials(run_id), row.score["sigma"])
    changed = {c.trial for c in store.mechanism_records(run_id)
               if c.mechanism == row.name and c.trial in with_ and c.hook in ACTING_HOOKS
               and c.effective}
    return level2_verdict.decide(seed, row.name, row.activated_at, row.window_end, with_,
                                 arms["without"], scores, len(changed))


def assert_verdict_is_the_stated_one(store: RunStore, run_id: str, seed: int,
                                     row: MechanismRow) -> None:
    expected = stated_verdict(store, run_id, seed, row)
    assert expected.judged, expected
    assert row.status == (KEPT if expected.keep else REVERTED), (row, expected)
    assert row.score["p"] == expected.p and row.score["pairs"] == [
        list(pair) for pair in expected.pairs], (row.score, expected)
    verbs = ("kept",) if expected.keep else ("reverted", "idle", "never called")
    assert row.reason.startswith(verbs), row.reason


def test_library_mechanisms_are_chosen_by_the_bandit_and_judged_by_the_coin_design(
        tmp_path: Path, executor: SandboxBackend) -> None:
    settings = RunSettings(budgets=Budgets(max_trials=20), outer=OuterSettings(
        levels=("1", "2"), mechanism_source="library", l2_every=4))
    loop, store = surrogate_loop(tmp_path, executor, settings)
    loop.run()
    run = store.get_run("run-l2")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 21
    rows = list(store.mechanisms("run-l2"))
    assert len(rows) == 2 and "noop" not in {r.name for r in rows}
    first, second = rows
    for row in rows:
        assert row.origin == "library" and "bandit: Thompson draw" in row.field, row.field
    # Each was judged over its own window of 8 by the stated test, and its verdict is
    # the one that test gives on the stored trials.
    for row in rows:
        assert row.score["test"].startswith("one-sided paired randomisation test")
        assert len(row.score["pairs"]) == 4
        assert_verdict_is_the_stated_one(store, "run-l2", settings.search.seed, row)
    assert second.activated_at is not None and first.window_end is not None
    assert second.activated_at > first.window_end
    calls = store.mechanism_records("run-l2")
    trials = store.trials("run-l2")
    for t in trials:
        name = t.proposal_source.split("+")[0].removeprefix("mechanism:")
        if t.proposal_source.startswith("mechanism:"):
            assert f"[suggested by {name}]" in t.description, t
            assert any(c.trial == t.index and c.mechanism == name and c.effect ==
                       "suggested" for c in calls)
    for row in rows:  # every WITH trial of each window has its hook calls recorded
        assert row.activated_at is not None and row.window_end is not None
        assigned = MechanismLog(store).outer_state("run-l2", f"arms:{row.name}")
        assert assigned is not None
        window = range(row.activated_at, min(row.window_end, 20) + 1)
        with_ = {i for i in assigned["with"] if i in window}
        assert len(with_) == len(window) // 2, (row.name, assigned)
        assert {c.trial for c in calls if c.mechanism == row.name} >= with_, row.name
    report = mechanism_report.render(store, "run-l2")
    assert "NOT injected" not in report and "- verdict: one-sided paired" in report
    kinds = Counter(e.payload["action"] for e in store.events_after("run-l2", 0)
                    if e.kind is EventKind.MECHANISM)
    assert kinds["activated"] == 2 and kinds["judged"] == 2
    assert kinds["kept"] + kinds["reverted"] == 2


def _mechanism(body: str) -> str:
    return textwrap.dedent(body)


RAISES = _mechanism('''
    from mechanisms import sdk

    class Raiser:
        def filter(self, proposal, state):
            return sdk.accept()

        def observe(self, trial, state):
            if state["trial_index"] >= 8:
                raise RuntimeError("raiser exploded on purpose")
''')
HANGS = _mechanism('''
    class Hanger:
        def filter(self, proposal, state):
            while state["trial_index"] >= 8:
                pass
            return {"action": "accept"}
''')
HOGS = _mechanism('''
    class Hog:
        def filter(self, proposal, state):
            hoard = []
            while state["trial_index"] >= 8:
                hoard.append(bytearray(16 << 20))
            return {"action": "accept"}
''')
GOOD = _mechanism('''
    from mechanisms import sdk

    class LowerLr:
        def filter(self, proposal, state):
            changes = dict(proposal["changes"])
            if changes.get("MATRIX_LR") == 0.03:
                return sdk.accept()
            changes["MATRIX_LR"] = 0.03
            return sdk.replace(sdk.proposal(changes, "MATRIX_LR pinned to 0.03"), "pin lr")
''')
HURTS = _mechanism('''
    from mechanisms import sdk

    class Giant:
        def filter(self, proposal, state):
            giant = {"DEPTH": 16, "ASPECT_RATIO": 128}
            if proposal["changes"] == giant:
                return sdk.accept()
            return sdk.replace(sdk.proposal(giant, "as big as it gets"), "bigger is better")
''')


def network(host: str, port: int) -> str:
    return _mechanism(f'''
        import socket

        class Caller:
            def filter(self, proposal, state):
                socket.create_connection(({host!r}, {port}), timeout=1).close()
                return {{"action": "accept"}}
    ''')


FILES = _mechanism('''
    class Reader:
        def context(self, state):
            return open("/etc/passwd").read()[:50]
''')


def designer(codes: list[tuple[str, str, str]]) -> tuple[
        list[RecordedRequest], object]:
    """A responder for the four Level-2 steps; round n answers with codes[n]."""
    explores: list[RecordedRequest] = []
    state = {"round": -1}

    def answer(request: RecordedRequest) -> Script:
        last = request.messages[-1]["content"]
        if "Step 1: explore" in last:
            state["round"] += 1
            explores.append(request)
            return Reply("1. an idea\n2. another\n3. a third")
        name, field, code = codes[state["round"]]
        if "Step 2: critique" in last:
            return Reply(f"the first is best\nSELECTED: 1\nFIELD: {field}")
        if "Step 3: specification" in last:
            return Reply(json.dumps({"name": name, "field": field, "hooks": ["filter"],
                                     "description": f"test mechanism {name}"}))
        return Reply(f"```python\n{code}```")

    return explores, answer


def test_bad_mechanisms_are_stopped_or_disabled_and_the_run_goes_on(
        tmp_path: Path, executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    codes = [("not_python", "typos", "class Broken(:\n    pass\n"),
             # refused by the static gate before it runs: the address (TEST-NET-1) is
             # never dialled; the next test lets it run against a real listener
             ("caller", "networking", network("192.0.2.1", 9)),
             ("reader", "file systems", FILES),
             ("raiser", "software faults", RAISES),
             ("hanger", "halting problems", HANGS),
             ("hog", "memory management", HOGS),
             ("lower_lr", "optimisation", GOOD),
             ("giant", "scaling laws", HURTS)]
    explores, responder = designer(codes)
    with FakeLLMServer(responder=responder) as server:  # type: ignore[arg-type]
        settings = RunSettings(
            budgets=Budgets(max_trials=36), llm=llm_settings(server.anthropic_url),
            outer=OuterSettings(levels=("1", "2"), mechanism_source="llm", l2_every=2,
                                code_retries=0, max_l2_rounds=len(codes)))
        loop, store = surrogate_loop(tmp_path, executor, settings)
        loop.run()
    run = store.get_run("run-l2")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 37, run.stop_reason
    rows = {r.name: r for r in store.mechanisms("run-l2")}
    assert list(rows) == [c[0] for c in codes]
    for name in ("not_python", "caller", "reader"):
        assert rows[name].status == GATE_REJECTED
        assert [g["gate"] for g in rows[name].gates] == ["static"], rows[name].gates
    assert "not valid Python" in rows["not_python"].reason
    assert "'socket' is not allowed" in rows["caller"].reason
    assert "'open' is not allowed" in rows["reader"].reason
    for name, reason in (("raiser", "raised"), ("hanger", "timeout"), ("hog", "oom")):
        row = rows[name]
        assert row.status == DISABLED, row
        assert [g["gate"] for g in row.gates] == ["static", "contract", "activation"]
        assert row.failure is not None and row.failure["reason"] == reason, row.failure
    assert "RuntimeError: raiser exploded on purpose" in rows["raiser"].traceback
    # The next round's explore prompt shows the failure and its traceback.
    later = explores[codes.index(codes[4])].messages[-1]["content"]
    assert "raiser exploded on purpose" in later and "Traceback" in later
    # No field is named by default; the field the LLM stated is recorded.
    assert "Fields you might draw from" not in explores[0].messages[-1]["content"]
    assert rows["lower_lr"].field == "optimisation"
    assert [s["step"] for s in rows["lower_lr"].steps] == ["explore", "critique", "spec",
                                                            "code"]
    # The good one changed proposals in the run; the hurting one was reverted.
    good = [c for c in store.mechanism_records("run-l2") if c.mechanism == "lower_lr"]
    assert any(c.effect == "replaced" for c in good)
    replaced = [t for t in store.trials("run-l2") if "MATRIX_LR pinned" in t.description]
    # What ran had the pinned value (its `changes` are against the incumbent, which may
    # already hold 0.03 once a pinned trial was kept).
    assert replaced and all(loop.task.read_knobs(loop.artifacts.read_trial(
        "run-l2", t.index, "train.py").decode())["MATRIX_LR"] == 0.03 for t in replaced)
    giant = rows["giant"]
    # Its WITH trials all OOM; the paired test sees it far behind its WITHOUT twins.
    assert giant.status == REVERTED and giant.reason.startswith("reverted"), giant
    assert giant.score["effect"] < 0 and giant.score["p"] > 0.1, giant.score


def test_the_llm_designs_while_trials_run_and_a_failed_design_is_reported(
        tmp_path: Path, executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow model's design round (#23: explore, critique and spec took 10 minutes on a
    local model, and no trial ran meanwhile) runs beside the inner loop: trials start and
    finish while it designs. A spec that is not JSON fails the round, and the run's
    mechanisms.md says so."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)

    def slow(request: RecordedRequest) -> Script:
        last = request.messages[-1]["content"]
        if "Step 3: specification" in last:
            return Reply(" <<SYS>> # Step 41: not a specification", delay=1.5)
        return Reply("1. an idea\nSELECTED: 1\nFIELD: control", delay=1.5)

    with FakeLLMServer(responder=slow) as server:
        settings = RunSettings(
            budgets=Budgets(max_trials=12), llm=llm_settings(server.anthropic_url),
            outer=OuterSettings(levels=("1", "2"), mechanism_source="llm", l2_every=3,
                                max_l2_rounds=1))
        loop, store = surrogate_loop(tmp_path, executor, settings)
        loop.run()
    assert store.get_run("run-l2").state is RunState.SUCCEEDED
    notes = [e.payload["detail"] for e in store.events_after("run-l2", 0, limit=10_000)
             if e.kind is EventKind.MECHANISM and e.payload["action"] == "round_skipped"]
    assert len(notes) == 1 and "failed: the specification is not a JSON object" in notes[0]
    match = re.search(r"designed while trials (\d+)-(\d+) ran", notes[0])
    assert match is not None and int(match.group(2)) > int(match.group(1)), notes[0]
    trials = {t.index: t for t in store.trials("run-l2")}
    first, last = int(match.group(1)), int(match.group(2))
    assert all(trials[i].finished for i in range(first, last + 1))  # they ran meanwhile
    page = mechanism_report.render(store, "run-l2")
    assert "## Rounds that brought no mechanism" in page and "specification" in page


def test_deny_network_from_a_mechanism_in_a_run_is_the_sandboxs_doing(
        tmp_path: Path, executor: SandboxBackend, bridge_gateway: str,
        listener: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The static gate refuses `socket` (above); here it waves the caller through, so
    the caller's filter really tries to connect to a listener on this machine while the
    contract gate exercises it. Its sandbox has no network: the connection fails, the
    listener sees nobody, the mechanism is refused and the run goes on."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    port, accepted = listener
    source = network(bridge_gateway, port)
    static_check = gates.static_check

    def waved_through(code: str, settings: gates.GateSettings | None = None
                      ) -> gates.GateVerdict:
        if code.strip() == source.strip():
            return gates.GateVerdict("static", True, "waved through by the test")
        return static_check(code, settings)

    monkeypatch.setattr(gates, "static_check", waved_through)  # the activation gates
    monkeypatch.setattr(design, "static_check", waved_through)  # the designer's check
    _, responder = designer([("caller", "networking", source)])
    with FakeLLMServer(responder=responder) as server:  # type: ignore[arg-type]
        settings = RunSettings(
            budgets=Budgets(max_trials=10), llm=llm_settings(server.anthropic_url),
            outer=OuterSettings(levels=("1", "2"), mechanism_source="llm", l2_every=2,
                                code_retries=0, max_l2_rounds=1))
        loop, store = surrogate_loop(tmp_path, executor, settings)
        loop.run()
    assert store.get_run("run-l2").state is RunState.SUCCEEDED
    rows = store.mechanisms("run-l2")
    assert len(rows) == 1, [e.payload for e in store.events_after("run-l2", 0)
                            if e.kind is EventKind.MECHANISM]
    row = rows[0]
    assert row.status == GATE_REJECTED, row
    assert [g["gate"] for g in row.gates] == ["static", "contract"], row.gates
    assert "filter: raised" in row.reason and "OSError" in row.traceback, row.reason
    assert accepted == []
