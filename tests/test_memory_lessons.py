"""Persistent memory: a finished run leaves lessons per task (what helped, what hurt,
what crashed); the next run's proposer sees them in its prompt; the evaluator never
does; they can be listed and cleared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.research.lessons import distill
from controller.store.memory import Lesson, MemoryStore
from controller.store.runs import RunStore
from tests.fake_llm_server import FakeLLMServer, Reply
from tests.test_loop_harness import (
    TEST_KEY,
    SyntheticTask,
    llm_settings,
    make_loop,
    params_answer,
    random_params_responder,
    run_settings,
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    with FakeLLMServer(responder=random_params_responder()) as fake:
        yield fake


def test_lessons_of_run_1_reach_run_2s_prompts_and_never_its_evaluations(
        tmp_path: Path, server: FakeLLMServer) -> None:
    server.push(Reply(params_answer({"MATRIX_LR": 0.07}, "higher matrix LR")),
                Reply(params_answer({"DEPTH": 16}, "much deeper")),
                Reply(params_answer({"MATRIX_LR": 0.3}, "far too high")))
    settings = run_settings(3, llm_settings(server.anthropic_url),
                            proposer={"max_fix_attempts": 0})
    first = make_loop(tmp_path, SyntheticTask(), settings, run_id="run-1")
    first.loop.run()
    lessons = first.memory.list("synthetic")
    kinds = sorted(lesson.kind for lesson in lessons)
    assert kinds == ["crashed", "helped", "hurt"]
    helped = next(lesson for lesson in lessons if lesson.kind == "helped")
    assert '{"MATRIX_LR": 0.07} lowered val_bpb by' in helped.text
    crashed = next(lesson for lesson in lessons if lesson.kind == "crashed")
    assert "MemoryError: CUDA out of memory" in crashed.text
    assert all(lesson.run_id == "run-1" for lesson in lessons)

    asked_before = len(server.requests)
    task = SyntheticTask()
    second = make_loop(tmp_path, task, settings, run_id="run-2", store=first.store)
    second.loop.run()
    prompt = server.requests[asked_before].text
    assert "# Lessons from earlier runs on this task" in prompt
    for lesson in lessons:
        assert lesson.text in prompt
        assert all(lesson.text not in e.source for e in task.evaluated)
    # Without memory, the prompt has no lessons.
    third = make_loop(tmp_path, SyntheticTask(), settings, run_id="run-3", store=first.store,
                      use_memory=False)
    asked_before = len(server.requests)
    third.loop.run()
    assert "Lessons" not in server.requests[asked_before].text


def test_memory_is_per_task_and_can_be_listed_and_cleared(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    memory = MemoryStore(store)
    memory.add([Lesson("surrogate", "run-a", "helped", "A"),
                Lesson("cpu-tiny", "run-b", "crashed", "B"),
                Lesson("surrogate", "run-c", "hurt", "C", delta=0.01)], "alice")
    memory.add([Lesson("surrogate", "run-d", "helped", "D")], "bob")
    assert [m.text for m in memory.list("surrogate", owner="alice")] == ["C", "A"]  # newest
    assert [m.text for m in memory.list("surrogate")] == ["D", "C", "A"]  # every owner's
    assert {m.owner for m in memory.list()} == {"alice", "bob"}
    assert memory.clear("surrogate", owner="bob") == 1
    assert memory.clear("surrogate", owner="alice") == 2
    assert [m.text for m in memory.list()] == ["B"]
    assert memory.clear() == 1 and memory.list() == []


def test_distill_skips_invalid_proposals_and_caps_what_hurt(tmp_path: Path) -> None:
    from controller.store.records import TrialRecord, TrialStatus

    def trial(i: int, status: TrialStatus, val: float | None, job: str = "ok",
              changes: dict[str, object] | None = None) -> TrialRecord:
        return TrialRecord("r", i, True, 1, "", changes or {"DEPTH": i}, status, val,
                           job_status=job)

    trials = [trial(0, TrialStatus.KEEP, 1.0)] + [
        trial(i, TrialStatus.DISCARD, 1.0 + i / 100) for i in range(1, 6)] + [
        trial(6, TrialStatus.CRASH, None, job="invalid")]
    lessons = distill("t", "r", trials)
    assert [lesson.kind for lesson in lessons] == ["hurt"] * 3
    assert '{"DEPTH": 5} raised val_bpb by 0.050000' in lessons[0].text
