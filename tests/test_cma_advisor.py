"""The optimizer-advisor mechanism (mechanisms/library/cma_advisor.py): its CMA-ES learns
from the trials it is shown, `suggest` is its next point, `context` shows its state, its
state resumes exactly; and in a real run its hooks run in the sandboxed mechanism host
and its suggestions become trials."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.gates import static_check
from controller.research.outer import attach_outer_levels
from controller.research.settings import (
    Budgets,
    InitialMechanism,
    OuterSettings,
    RunSettings,
)
from controller.sandbox.backend import SandboxBackend
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore
from mechanisms import library
from mechanisms.library.cma_advisor import CmaAdvisor
from mechanisms.wire import LoopState, TrialView
from tests.fake_llm_server import FakeLLMServer
from tests.test_loop_harness import (
    TEST_KEY,
    SyntheticTask,
    llm_settings,
    make_loop,
    random_params_responder,
    run_settings,
)

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("BATCH", "int", 2**10, 2**16, power_of_two=True),
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("WD", "float", 0.0, 1.0),
    Knob("PATTERN", "choice", choices=("SSSL", "L")),
))
START: dict[str, Any] = {"DEPTH": 8, "BATCH": 4096, "LR": 0.01, "WD": 0.2, "PATTERN": "SSSL"}


def bowl(c: dict[str, Any]) -> float:
    return float(math.log(c["LR"] / 0.1) ** 2 + ((c["DEPTH"] - 12) / 4) ** 2
                 + (math.log2(c["BATCH"]) - 14) ** 2 / 4 + ((c["WD"] - 0.7) / 0.3) ** 2)


def follow(trials: int, advisor: CmaAdvisor | None = None) -> tuple[float, CmaAdvisor]:
    """Run only the advisor's suggestions on the bowl, round-tripping its state through
    JSON after every trial (as the host does between calls)."""
    advisor = advisor or CmaAdvisor()
    best, incumbent = bowl(START), dict(START)
    history = [TrialView(0, {}, dict(START), "keep", best, None)]
    for i in range(1, trials + 1):
        state = LoopState(SPACE, incumbent, best, i, 7, tuple(history[-30:])).to_json()
        [suggestion] = advisor.suggest(state)
        SPACE.check(suggestion["changes"])
        config = {**incumbent, **suggestion["changes"]}
        value = bowl(config)
        view = TrialView(i, suggestion["changes"], config,
                         "keep" if value < best else "discard", value, best)
        advisor.observe(view.to_json(), state)
        history.append(view)
        if value < best:
            best, incumbent = value, config
        fresh = CmaAdvisor()
        fresh.load_state(json.loads(json.dumps(advisor.save_state())))
        advisor = fresh
    return best, advisor


def test_the_advisor_passes_the_static_gate() -> None:
    assert static_check(library.source("cma_advisor")).passed


def test_following_the_advisor_converges_on_a_smooth_bowl() -> None:
    start = bowl(START)
    best, advisor = follow(60)
    assert best < start / 5, (start, best)  # 7.9 -> about 0.56 (measured)
    assert advisor.generation >= 6  # lambda = 8 for its 4 numeric knobs


def test_state_resumes_to_the_same_next_point_and_context() -> None:
    _, advisor = follow(20)
    state = LoopState(SPACE, START, 1.0, 21, 7, ()).to_json()
    fresh = CmaAdvisor()
    fresh.load_state(json.loads(json.dumps(advisor.save_state())))
    assert fresh.suggest(state) == advisor.suggest(state)
    assert fresh.context(state) == advisor.context(state)
    text = advisor.context(state)
    assert "generation 2" in text and "sigma" in text and "Best so far: val_bpb" in text
    assert "Its next point:" in text and len(text) <= 1500


def test_it_learns_from_the_history_it_is_shown_first() -> None:
    history = tuple(TrialView(i, {"LR": 0.001 * i}, {**START, "LR": 0.001 * i}, "discard",
                              1.0 + i, 1.0) for i in range(1, 10))
    state = LoopState(SPACE, START, 1.0, 10, 7, history).to_json()
    advisor = CmaAdvisor()
    advisor.suggest(state)
    # 9 trials shown, lambda 8: one generation done, one point pending.
    assert advisor.generation == 1 and len(advisor.pending) == 1
    assert advisor.best == {"index": 1, "val_bpb": 2.0}


def test_a_frozen_knob_restarts_it_on_the_smaller_space() -> None:
    _, advisor = follow(10)
    smaller = SPACE.without(("LR",))
    incumbent = {k: v for k, v in START.items() if k != "LR"}
    state = LoopState(smaller, incumbent, 1.0, 11, 7, ()).to_json()
    [suggestion] = advisor.suggest(state)
    assert "LR" not in suggestion["changes"] and advisor.names == ["DEPTH", "BATCH", "WD"]
    smaller.check(suggestion["changes"])


@pytest.mark.docker
def test_in_a_run_its_hooks_run_in_the_sandbox_and_its_suggestions_become_trials(
        tmp_path: Path, executor: SandboxBackend) -> None:
    settings = RunSettings(budgets=Budgets(max_trials=10), outer=OuterSettings(
        mechanisms=(InitialMechanism("cma_advisor"),), suggest_every=2))
    settings.validate()
    store = RunStore(tmp_path / "db.sqlite3")
    store.create_run("run-cma", settings.to_dict())
    stop = StopSignal()
    loop = InnerLoop("run-cma", settings, SyntheticTask(),
                     LocalPerturbation(settings.search.seed, settings.proposer), store,
                     ArtifactStore(tmp_path / "runs"), stop)
    attach_outer_levels(loop, executor, lambda: pytest.fail("no LLM in this run"))
    loop.run()
    trials = store.trials("run-cma")
    assert len(trials) == 11
    suggested = [t for t in trials if t.description.endswith("[suggested by cma_advisor]")]
    # suggest is called on every 2nd trial (2, 4, ..., 10); each time it had a point.
    assert [t.index for t in suggested] == [2, 4, 6, 8, 10]
    # Each says which knobs it changed (NAME old -> new), then the advisor's own tag.
    for t in suggested:
        changed, _, tag = t.description.partition(" (CMA-ES advisor: generation ")
        assert tag and [c.split(" ")[0] for c in changed.split(", ")] == list(t.changes), t
        assert all(" -> " in c for c in changed.split(", ")), t
    records = store.mechanism_records("run-cma")
    hooks = {(r.hook, r.trial) for r in records if r.mechanism == "cma_advisor"}
    assert {("suggest", i) for i in (2, 4, 6, 8, 10)} <= hooks
    assert {("observe", i) for i in range(1, 11)} <= hooks
    # The suggested trials ran the advisor's point: the knobs it changed are in the trial.
    for t in suggested:
        assert t.changes, t


@pytest.mark.docker
def test_an_llm_proposer_is_shown_the_advisors_state(
        tmp_path: Path, executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    with FakeLLMServer(responder=random_params_responder()) as fake:
        settings = replace(run_settings(4, llm_settings(fake.anthropic_url)), outer=OuterSettings(
            mechanisms=(InitialMechanism("cma_advisor"),), suggest_every=0))
        settings.validate()
        parts = make_loop(tmp_path, SyntheticTask(), settings, use_memory=False)
        attach_outer_levels(parts.loop, executor, lambda: pytest.fail("levels 1.5/2 are off"))
        parts.loop.run()
        texts = [r.text for r in fake.requests]
    assert len(texts) == 4  # one proposal per trial; suggest_every=0: no suggestion
    for text in texts:
        assert "CMA-ES advisor (learns from every finished trial): generation 0" in text
        assert "Its next point: DEPTH=" in text
    assert "Best so far: val_bpb" in texts[-1]
    context = [r for r in parts.store.mechanism_records("run-test") if r.hook == "context"]
    assert {r.trial for r in context} == {1, 2, 3, 4}
