"""Parallel batches: B trials run at once on free slots, each result is attributed to its
own trial and judged in trial order; with pipelining the LLM proposes while trials run;
a stop mid-batch re-runs the unfinished trials on resume and counts none twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.research.level1.loop import StopSignal
from controller.store.records import EventKind, RunState
from tests.fake_llm_server import FakeLLMServer
from tests.test_loop_harness import (
    TEST_KEY,
    SyntheticTask,
    llm_settings,
    make_loop,
    random_params_responder,
    run_settings,
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    with FakeLLMServer(responder=random_params_responder()) as fake:
        yield fake


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def test_a_batch_runs_concurrently_and_each_result_belongs_to_its_trial(
        tmp_path: Path) -> None:
    task = SyntheticTask(trial_seconds=0.3, slots=4)
    parts = make_loop(tmp_path, task, run_settings(8, batch_size=4, seed=2))
    parts.loop.run()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 9
    trials = parts.store.trials("run-test")
    assert _max_overlap([(t.started_at, t.ended_at) for t in trials[1:]]) >= 3
    # The 8 trials after the baseline took less than running them one by one would (the
    # end-of-run check, which runs one job at a time, is not part of the batch).
    assert trials[-1].ended_at - trials[1].started_at < 0.3 * 8
    fresh = SyntheticTask()
    never = threading.Event()
    for t in trials:
        source = parts.artifacts.read_trial("run-test", t.index, "train.py").decode()
        assert t.val_bpb == fresh.evaluate(source, 2, never).val_bpb
    finished = [e.payload["trial"] for e in parts.store.events_after("run-test", 0)
                if e.kind is EventKind.TRIAL_FINISHED]
    assert finished == list(range(9))  # judged in trial order
    kept = [t.val_bpb for t in trials if t.status and t.status.value == "keep" and t.val_bpb]
    assert kept == sorted(kept, reverse=True)


def test_pipelined_proposals_are_made_while_the_trials_run(tmp_path: Path,
                                                           server: FakeLLMServer) -> None:
    server.latency = 0.4
    task = SyntheticTask(trial_seconds=0.6, slots=2)
    settings = run_settings(6, llm_settings(server.anthropic_url), batch_size=2, pipeline=True)
    parts = make_loop(tmp_path, task, settings)
    parts.loop.run()
    trials = parts.store.trials("run-test")
    assert parts.store.get_run("run-test").trials_done == 7
    runs = sorted((t.started_at, t.ended_at) for t in trials[1:])
    # After the first round (2 to run, 2 ahead), every answer was written while trials
    # ran...
    middles = [r.time + server.latency / 2 for r in server.requests]
    assert len(middles) == 6
    assert all(any(s < m < e for s, e in runs) for m in middles[4:]), (middles, runs)
    # ...so a trial starts as soon as a slot frees, not one LLM latency later.
    gaps = [runs[k][0] - runs[k - 2][1] for k in range(2, len(runs))]
    assert max(gaps) < server.latency / 2, gaps


def test_a_stop_mid_batch_reruns_unfinished_trials_and_counts_none_twice(
        tmp_path: Path) -> None:
    stop = StopSignal()
    task = SyntheticTask(trial_seconds=0.25, slots=3)
    settings = run_settings(9, batch_size=3, seed=4)
    parts = make_loop(tmp_path, task, settings, stop=stop)

    def stop_when_some_finished() -> None:
        while parts.store.get_run("run-test").trials_done < 4:
            time.sleep(0.01)
        time.sleep(0.05)
        stop.request("shutdown")

    threading.Thread(target=stop_when_some_finished, daemon=True).start()
    parts.loop.run()
    paused = parts.store.get_run("run-test")
    assert paused.state is RunState.RUNNING
    unfinished = [t.index for t in parts.store.trials("run-test") if not t.finished]
    assert unfinished, "the stop should interrupt a batch"
    best_before = paused.best_val_bpb

    resumed = make_loop(tmp_path, SyntheticTask(trial_seconds=0.05), settings, create=False,
                        store=parts.store)
    resumed.loop.run()
    run = parts.store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 10
    events = parts.store.events_after("run-test", 0)
    finished = Counter(e.payload["trial"] for e in events if e.kind is EventKind.TRIAL_FINISHED)
    assert finished == Counter(range(10))
    reruns = {e.payload["trial"]: e.payload["attempt"] for e in events
              if e.kind is EventKind.TRIAL_STARTED and e.payload["attempt"] > 1}
    assert set(reruns) == set(unfinished) and set(reruns.values()) == {2}
    assert run.best_val_bpb is not None and best_before is not None
    assert run.best_val_bpb <= best_before
