"""The inner loop with an LLM proposer on the real SDKs against the scripted fake server:
rejected answers go back with their reason, prompts and answers are stored with each
trial, crashes get bounded fix attempts, an LLM outage pauses the run and a resume
continues it, budgets end it, and a replay reproduces its decisions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.llm.settings import LLMSettings
from controller.research.level1.final_check import FRESH_SEED_OFFSET
from controller.store.llm_calls import CallLog
from controller.store.records import EventKind, RunState, TrialStatus
from tests.fake_llm_server import Fail, FakeLLMServer, Reply
from tests.test_loop_harness import (
    TEST_KEY,
    SyntheticTask,
    code_answer,
    llm_settings,
    make_loop,
    params_answer,
    random_params_responder,
    run_settings,
)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def _url(server: FakeLLMServer, provider: str) -> str:
    return server.anthropic_url if provider == "anthropic" else server.openai_url


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_params_run_feeds_rejections_back_and_stores_every_prompt_and_answer(
        tmp_path: Path, server: FakeLLMServer, provider: str) -> None:
    server.push(Reply(params_answer({"LEARNING_RATE": 0.1})),
                Reply(params_answer({"MATRIX_LR": 0.06}, "a higher matrix LR")),
                Reply(params_answer({"DEPTH": 10}, "deeper")),
                Reply(params_answer({"EMBEDDING_LR": 0.9}, "faster embeddings")))
    task = SyntheticTask()
    parts = make_loop(tmp_path, task, run_settings(3, llm_settings(_url(server, provider),
                                                                   provider)))
    parts.loop.run()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 4
    requests = server.requests
    assert len(requests) == 4
    retry = requests[1].messages
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert "Rejected: LEARNING_RATE: is not a knob" in retry[-1]["content"]
    # The prompt shows the knobs with ranges, and later the actual changes and outcomes.
    assert "MATRIX_LR = 0.04  (float in [0.001, 0.5])" in requests[0].text
    trials = parts.store.trials("run-test")
    assert trials[1].changes == {"MATRIX_LR": 0.06}
    assert trials[1].hypothesis == "a higher matrix LR"
    assert 'trial 1: ' in requests[2].text and '{"MATRIX_LR": 0.06}' in requests[2].text
    assert "hypothesis: a higher matrix LR" in requests[2].text
    # Every call is stored with its trial; tokens and cost add up per trial and per run.
    transcript = json.loads(parts.artifacts.read_trial("run-test", 1, "llm.json"))
    assert [c["call"] for c in transcript["calls"]] == [0, 1]
    assert "is not a knob" in transcript["transcript"][0]["rejected"]
    assert transcript["calls"][0]["messages"][0]["content"] == requests[0].messages[0]["content"]
    assert trials[1].llm_tokens == 2 * 160 and trials[2].llm_tokens == 160
    assert run.llm_tokens_used == 4 * 160 and run.llm_cost_usd > 0
    assert trials[1].llm_cost_usd == pytest.approx(run.llm_cost_usd / 2)
    assert len(CallLog(parts.store).calls("run-test")) == 4
    # The key went to the server and nowhere into what the loop stored.
    stored = (tmp_path / "db.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert TEST_KEY.encode() not in stored


def test_an_answer_that_never_passes_is_not_a_trial_its_slot_goes_to_local(
        tmp_path: Path, server: FakeLLMServer) -> None:
    """After its repair turns the LLM still gave prose: the trial is proposed by offline
    local search instead and runs; the failure is recorded with it and counted in the
    summary. The repair turn quotes the rejected answer cut short, never whole."""
    rambling = "I think we should go deeper. " * 40  # 1,160 characters, no JSON
    server.push(*[Reply(rambling)] * 3, Reply(params_answer({"DEPTH": 10})))
    task = SyntheticTask()
    settings = run_settings(2, llm_settings(server.anthropic_url),
                            proposer={"max_invalid_retries": 2})
    parts = make_loop(tmp_path, task, settings)
    parts.loop.run()
    trials = parts.store.trials("run-test")
    assert trials[1].job_status == "ok" and trials[1].status is not TrialStatus.CRASH
    assert trials[1].changes and "no JSON object" in trials[1].llm_failure
    assert "[local]; the LLM gave no usable answer in 3 calls" in trials[1].description
    assert trials[2].llm_failure == "" and trials[2].changes == {"DEPTH": 10}
    searched = [e for e in task.evaluated if e.seed < FRESH_SEED_OFFSET]  # no final check
    assert len(searched) == 3  # the baseline, local's trial 1 and the LLM's trial 2
    # Every repair turn is short: the first prompt, the cut answer, the error.
    for request in server.requests[1:3]:
        assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
        assert len(request.messages[1]["content"]) < 400
        assert "Rejected: response: no JSON object found" in request.messages[2]["content"]
    summary = parts.store.get_run("run-test").summary
    assert "LLM: 4 calls (0 failed), 2 proposals (0 repaired, 1 unusable" in summary
    finished = [e for e in parts.store.events_after("run-test", 0)
                if e.kind is EventKind.TRIAL_FINISHED]
    assert "no JSON object" in finished[1].payload["llm_failure"]


def test_a_run_whose_llm_never_gives_a_usable_answer_says_so(
        tmp_path: Path, server: FakeLLMServer) -> None:
    server.push(*[Reply("Let me think about it.")] * 6)
    settings = run_settings(3, llm_settings(server.anthropic_url),
                            proposer={"max_invalid_retries": 1})
    parts = make_loop(tmp_path, SyntheticTask(), settings)
    parts.loop.run()
    run = parts.store.get_run("run-test")
    assert run.trials_done == 4  # the baseline and three trials local proposed
    assert run.stop_reason.startswith("the LLM never produced a usable proposal (3 asked")
    assert "every trial was proposed by local search" in run.summary


def test_code_mode_runs_edits_and_gives_a_crash_a_bounded_number_of_fixes(
        tmp_path: Path, server: FakeLLMServer) -> None:
    line = "MATRIX_LR = 0.04\n"
    crash = code_answer(line.strip(), "MATRIX_LR = 0.05\nraise RuntimeError('diverged')",
                        "higher LR")
    server.push(
        Reply(crash),
        Reply(code_answer("raise RuntimeError('diverged')", "raise ValueError('still')")),
        Reply(code_answer("raise ValueError('still')", "raise ValueError('again')")),
        Reply(code_answer("NOISE_STD = 3e-4", "NOISE_STD = 0.0", "less noise")),
        Reply(code_answer(line.strip(), "MATRIX_LR = 0.07", "a higher LR, no crash")))
    settings = run_settings(4, llm_settings(server.anthropic_url),
                            proposer={"mode": "code", "max_fix_attempts": 2})
    parts = make_loop(tmp_path, SyntheticTask(), settings)
    parts.loop.run()
    trials = parts.store.trials("run-test")
    assert [t.status for t in trials[1:]] == [TrialStatus.CRASH] * 3 + [TrialStatus.KEEP]
    assert [t.fix_of for t in trials] == [None, None, 1, 2, None]
    assert [t.parent for t in trials[1:]] == [0, 1, 2, 0]
    texts = [r.text for r in server.requests]
    assert "# Fix request" in texts[1] and "RuntimeError: diverged" in texts[1]
    assert "raise RuntimeError('diverged')" in texts[1]  # the crashed file is shown
    assert "ValueError: still" in texts[2]
    assert "# Fix request" not in texts[3]  # two fixes spent: back to the incumbent
    assert "Rejected: protected: NOISE_STD defines the experiment" in texts[4]
    assert "MATRIX_LR = 0.07" in parts.artifacts.read_trial("run-test", 4, "train.py").decode()
    diff = parts.artifacts.read_trial("run-test", 2, "diff").decode()
    assert "-raise RuntimeError('diverged')" in diff


def test_an_llm_outage_pauses_the_run_and_resume_continues_from_the_incumbent(
        tmp_path: Path, server: FakeLLMServer) -> None:
    server.push(Reply(params_answer({"MATRIX_LR": 0.07})), Reply(params_answer({"DEPTH": 10})),
                Fail(529, "overloaded"), Fail(500), Fail(429))
    settings = run_settings(4, llm_settings(server.anthropic_url, max_attempts=3))
    parts = make_loop(tmp_path, SyntheticTask(), settings)
    parts.loop.run()
    paused = parts.store.get_run("run-test")
    assert paused.state is RunState.PAUSED and paused.trials_done == 3
    assert "failed 3 times in a row" in paused.stop_reason
    assert "bilevel resume" in paused.stop_reason
    kinds = [e.kind for e in parts.store.events_after("run-test", 0)]
    assert kinds[-1] is EventKind.RUN_PAUSED and EventKind.RUN_FINISHED not in kinds

    server.responder = random_params_responder()
    assert parts.store.unpause_run("run-test")
    resumed = make_loop(tmp_path, SyntheticTask(), settings, create=False, store=parts.store)
    resumed.loop.run()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 5
    assert f"Best val_bpb so far {paused.best_val_bpb:.6f}" in server.requests[5].text
    assert [t.index for t in parts.store.trials("run-test")] == list(range(5))


def test_the_llm_token_budget_ends_the_run(tmp_path: Path, server: FakeLLMServer) -> None:
    server.responder = random_params_responder()
    settings = run_settings(10, llm_settings(server.openai_url, "openai"),
                            budgets={"max_llm_tokens": 400})
    parts = make_loop(tmp_path, SyntheticTask(), settings)
    parts.loop.run()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED
    assert run.stop_reason == "LLM token budget of 400 spent"
    assert run.llm_tokens_used == 480 and run.trials_done == 4


def test_replay_of_a_stored_run_reproduces_its_decisions(tmp_path: Path,
                                                         server: FakeLLMServer) -> None:
    server.push(Reply("not json"))
    server.responder = random_params_responder(seed=5)
    settings = run_settings(6, llm_settings(server.anthropic_url), seed=3)
    first = make_loop(tmp_path, SyntheticTask(), settings, run_id="run-a")
    first.loop.run()
    asked = len(server.requests)

    replay = replace(settings, llm=LLMSettings(provider="replay", replay_run="run-a"))
    second = make_loop(tmp_path, SyntheticTask(), replay, run_id="run-b", store=first.store)
    second.loop.run()
    assert len(server.requests) == asked  # the replay asked no LLM

    def decisions(run_id: str) -> list[tuple[object, ...]]:
        return [(t.status, t.val_bpb, t.changes, t.hypothesis, t.job_status)
                for t in first.store.trials(run_id)]

    assert decisions("run-b") == decisions("run-a")
    assert first.store.get_run("run-b").best_val_bpb == first.store.get_run("run-a").best_val_bpb
    assert any(t.status is TrialStatus.KEEP for t in first.store.trials("run-a")[1:])
