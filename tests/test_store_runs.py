"""The SQLite run store: durable, gap-free events, exactly-once trial results."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.store.artifacts import ArtifactStore, BadArtifactName
from controller.store.records import EventKind, NotFoundError, RunState, TrialFinish, TrialStatus
from controller.store.runs import RunStore


def _finish(index: int, val: float | None, status: TrialStatus, best: bool) -> TrialFinish:
    return TrialFinish(index=index, status=status, val_bpb=val, memory_gb=1.0, metrics={},
                       job_status="ok", exception=None, seconds=0.1, new_best=best)


def test_store_uses_wal_and_survives_reopening(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    store.create_run("run-a", {"budgets": {"max_trials": 3}})
    store.begin_trial("run-a", 0, "baseline", {})
    store.finish_trial("run-a", _finish(0, 1.0, TrialStatus.KEEP, True), 1.5)
    store.close()
    mode = sqlite3.connect(tmp_path / "db.sqlite3").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"
    reopened = RunStore(tmp_path / "db.sqlite3")
    run = reopened.get_run("run-a")
    assert (run.trials_done, run.best_val_bpb, run.best_trial, run.baseline_val_bpb) == (
        1, 1.0, 0, 1.0)
    assert run.elapsed_seconds == 1.5


def test_events_have_gap_free_sequence_numbers_and_listeners_hear_commits(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    heard: list[str] = []
    store.subscribe(heard.append)
    store.create_run("run-a", {})
    store.append_event("run-a", EventKind.RUN_STARTED, {"resumed": False, "next_trial": 0})
    store.begin_trial("run-a", 0, "baseline", {})
    store.finish_trial("run-a", _finish(0, 1.0, TrialStatus.KEEP, True), 0.0)
    events = store.events_after("run-a", 0)
    assert [e.seq for e in events] == list(range(1, 6))
    assert [e.kind for e in events] == [EventKind.RUN_STARTED, EventKind.TRIAL_PROPOSED,
                                        EventKind.TRIAL_STARTED, EventKind.TRIAL_FINISHED,
                                        EventKind.NEW_BEST]
    assert [e.seq for e in store.events_after("run-a", 3)] == [4, 5]
    assert heard == ["run-a"] * 3


def test_a_trial_is_finished_exactly_once_and_a_rerun_is_a_new_attempt(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    store.create_run("run-a", {})
    assert store.begin_trial("run-a", 0, "baseline", {}) == 1
    assert store.begin_trial("run-a", 0, "baseline", {}) == 2  # restarted before finishing
    store.finish_trial("run-a", _finish(0, 1.0, TrialStatus.KEEP, True), 0.0)
    with pytest.raises(ValueError, match="not running"):
        store.finish_trial("run-a", _finish(0, 0.9, TrialStatus.KEEP, True), 0.0)
    with pytest.raises(ValueError, match="already finished"):
        store.begin_trial("run-a", 0, "baseline", {})
    kinds = [e.kind for e in store.events_after("run-a", 0)]
    assert kinds.count(EventKind.TRIAL_PROPOSED) == 1
    assert kinds.count(EventKind.TRIAL_FINISHED) == 1
    assert store.get_run("run-a").trials_done == 1


def test_finish_run_happens_once(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    store.create_run("run-a", {})
    assert store.finish_run("run-a", RunState.CANCELLED, "cancelled", "s", {})
    assert not store.finish_run("run-a", RunState.SUCCEEDED, "budget", "s", {})
    assert store.get_run("run-a").state is RunState.CANCELLED
    assert store.running_runs() == []


def test_list_runs_pages_newest_first(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    for i in range(5):
        store.create_run(f"run-{i}", {})
    page, cursor = store.list_runs(2, None)
    assert [r.id for r in page] == ["run-4", "run-3"]
    page, cursor = store.list_runs(2, cursor)
    assert [r.id for r in page] == ["run-2", "run-1"]
    page, cursor = store.list_runs(2, cursor)
    assert [r.id for r in page] == ["run-0"] and cursor is None


def test_unknown_run_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="run 'nope' not found"):
        RunStore(tmp_path / "db.sqlite3").get_run("nope")


def test_artifacts_resolve_best_and_refuse_paths_outside_the_run(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path)
    artifacts.write_trial("run-a", 3, "train.py", b"DEPTH = 9\n")
    assert artifacts.read("run-a", "best/train.py", best_trial=3) == b"DEPTH = 9\n"
    assert artifacts.read("run-a", "trials/3/train.py", best_trial=0) == b"DEPTH = 9\n"
    for name in ("../x", "trials/3/../../x", "trials/-1/log", "best/diff", "/etc/passwd"):
        with pytest.raises(BadArtifactName):
            artifacts.read("run-a", name, best_trial=3)
    with pytest.raises(NotFoundError):
        artifacts.read("run-a", "best/train.py", best_trial=None)
    with pytest.raises(NotFoundError):
        artifacts.read("../run-a", "results.tsv", best_trial=None)
