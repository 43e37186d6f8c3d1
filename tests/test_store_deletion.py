"""Deleting runs from the state dir, on a real SQLite file and real folders: every row
that refers to the run goes, nothing of another run does; task copies are stored once
and freed with their last run; retention picks only finished runs; the disk budget
counts shared copies once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.principals import Principal
from controller.research.deletion import Janitor, RunDeleter
from controller.research.errors import CapacityError, StateConflict
from controller.research.retention import RetentionPolicy, expired_runs
from controller.sandbox.backend import RunObjects
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.factory import run_objects
from controller.store import deletion, task_bundle
from controller.store.artifacts import ArtifactStore
from controller.store.disk import BUDGET_KEY, DiskBudget, usage_bytes
from controller.store.memory import Lesson, MemoryStore
from controller.store.records import NotFoundError, RunRecord, RunState
from controller.store.resources import DATA_VOLUME, TASK_IMAGE, RunResources
from controller.store.runs import RunStore

BUNDLE = {"bilevel-task.toml": b"name = 't'\n", "train.py": b"X = 1\n",
          "data/train/a.bin": b"\1" * 100_000}


def _fill_every_dependent_table(store: RunStore, run_id: str) -> list[str]:
    """One row for `run_id` in every table with a foreign key to runs(id), whatever
    its columns: a table added later is covered without editing this test."""
    tables = []
    with store.transaction() as tx:
        for table, column in deletion.dependent_tables(tx.db):
            cols = list(tx.db.execute(f"PRAGMA table_info({table})"))
            values = {c["name"]: (run_id if c["name"] == column else
                                  0 if "INT" in c["type"] or "REAL" in c["type"] else "x")
                      for c in cols if c["notnull"] or c["pk"]}
            names = ", ".join(values)
            tx.db.execute(f"INSERT INTO {table} ({names}) VALUES "
                          f"({', '.join('?' * len(values))})", tuple(values.values()))
            tables.append(table)
    return tables


def _rows(store: RunStore, run_id: str) -> dict[str, int]:
    with store.transaction() as tx:
        found = {table: tx.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?",
                                      (run_id,)).fetchone()[0]
                 for table, column in deletion.dependent_tables(tx.db)}
        found["runs"] = tx.db.execute("SELECT COUNT(*) FROM runs WHERE id = ?",
                                      (run_id,)).fetchone()[0]
        found["run_resources"] = tx.db.execute(
            "SELECT COUNT(*) FROM run_resources WHERE run_id = ?", (run_id,)).fetchone()[0]
    return found


def _finished(store: RunStore, run_id: str, state: RunState = RunState.SUCCEEDED) -> None:
    store.create_run(run_id, {})
    store.finish_run(run_id, state, "done", "done", {"state": state.value})


def _deleter(store: RunStore, root: Path) -> RunDeleter:
    def cancel(run_id: str, by: Principal) -> RunRecord:
        store.finish_run(run_id, RunState.CANCELLED, "cancelled", "cancelled",
                         {"state": "cancelled"})
        return store.get_run(run_id)

    def engine() -> RunObjects:  # a real engine that is not there
        return run_objects(ExecutorConfig(docker_url="unix:///nonexistent/docker.sock",
                                          namespace="ns"))

    return RunDeleter(store, ArtifactStore(root), engine, cancel)


def test_delete_removes_every_row_of_the_run_and_nothing_of_another(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    for run_id in ("run-a", "run-b"):
        _finished(store, run_id)
        tables = _fill_every_dependent_table(store, run_id)
        RunResources(store).claim(run_id, DATA_VOLUME, f"vol-{run_id}")
    assert {"trials", "events", "llm_calls", "mechanism_calls", "mechanisms",
            "outer_state"} <= set(tables)
    MemoryStore(store).add([Lesson(task="t", run_id="run-a", kind="helped", text="lr up")],
                           "shared")
    record = deletion.delete_run_rows(store, "run-a")
    assert record.id == "run-a"
    assert set(_rows(store, "run-a").values()) == {0}
    assert min(_rows(store, "run-b").values()) >= 1
    # What later runs learnt from it stays.
    assert [lesson.text for lesson in MemoryStore(store).list("t", 10)] == ["lr up"]
    with pytest.raises(NotFoundError):
        deletion.delete_run_rows(store, "run-a")


def test_delete_refuses_an_unfinished_run_unless_asked_to_cancel_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    deleter = _deleter(store, tmp_path / "runs")
    store.create_run("run-live", {})
    store.create_run("run-paused", {})
    store.pause_run("run-paused", "llm down")
    for run_id in ("run-live", "run-paused"):
        with pytest.raises(StateConflict, match="cancel it first"):
            deleter.delete(run_id)
        assert store.get_run(run_id).state in (RunState.RUNNING, RunState.PAUSED)
        deleted = deleter.delete(run_id, cancel=True)
        assert deleted.run.state is RunState.CANCELLED
        with pytest.raises(NotFoundError):
            store.get_run(run_id)
    with pytest.raises(NotFoundError):
        deleter.delete("run-never")


def test_engine_objects_of_a_deleted_run_are_kept_and_reported_when_the_engine_is_down(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    _finished(store, "run-a")
    RunResources(store).claim("run-a", DATA_VOLUME, "bilevel-ns-taskdata-1")
    RunResources(store).claim("run-a", TASK_IMAGE, "bilevel-task:1-ns")
    deleted = _deleter(store, tmp_path / "runs").delete("run-a")
    assert deleted.removed == []
    assert set(deleted.kept) == {"bilevel-ns-taskdata-1", "bilevel-task:1-ns"}
    assert all("engine is unavailable" in why for why in deleted.kept.values())


def test_identical_task_copies_are_stored_once_and_freed_with_their_last_run(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    one = task_bundle.store(root, "run-1", BUNDLE)
    alone = usage_bytes(root)
    for i in range(2, 9):
        task_bundle.store(root, f"run-{i}", BUNDLE)
    assert task_bundle.added_bytes(root, BUNDLE) == 0
    # Eight runs of one 100 kB task take about what one does (folders and links only).
    assert usage_bytes(root) < alone + 8 * 4096 * 4
    assert os.stat(one / "data/train/a.bin").st_nlink == 9  # 8 runs + the shared copy
    assert task_bundle.read_task_dir(one) == BUNDLE
    store = RunStore(tmp_path / "db.sqlite3")
    for i in range(1, 9):
        _finished(store, f"run-{i}")
    for i in range(1, 8):
        deletion.delete_run(store, root, f"run-{i}")
    assert (root / task_bundle.SHARED_DIR).exists() and len(
        list((root / task_bundle.SHARED_DIR).iterdir())) == 1
    _, freed = deletion.delete_run(store, root, "run-8")
    assert freed >= 100_000
    assert list((root / task_bundle.SHARED_DIR).iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == [task_bundle.SHARED_DIR]
    assert store.list_runs(50, None)[0] == []


def test_an_edited_shared_copy_is_not_handed_to_a_new_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    first = task_bundle.store(root, "run-1", BUNDLE)
    (first / "train.py").chmod(0o644)
    (first / "train.py").write_bytes(b"X = 666\n")  # edits the shared copy too
    second = task_bundle.store(root, "run-2", BUNDLE)
    assert task_bundle.read_task_dir(second) == BUNDLE
    with pytest.raises(task_bundle.BundleError, match="stored task changed"):
        task_bundle.load_stored(root, "run-1", task_bundle.digest(BUNDLE))


def test_a_crash_mid_deletion_or_creation_is_finished_or_undone_at_the_next_start(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    store = RunStore(tmp_path / "db.sqlite3")
    for run_id in ("run-kept", "run-half", "run-results"):
        _finished(store, run_id)
        task_bundle.store(root, run_id, BUNDLE)
    task_bundle.store(root, "run-created", BUNDLE)  # CreateRun died before the row
    # A deletion that renamed the folder aside, then died before the rows went.
    (root / "run-half").rename(root / f"{deletion.DELETED_PREFIX}run-half-123456")
    # One that died after the rows went.
    (root / "run-results" / "results.tsv").write_text("commit\tval_bpb\n")
    (root / "run-results").rename(root / f"{deletion.DELETED_PREFIX}run-results-abcdef")
    deletion.delete_run_rows(store, "run-results")
    # Trial artifacts without a row are never removed at start-up.
    (root / "run-lost" / "trials" / "0").mkdir(parents=True)
    assert sorted(deletion.remove_orphan_files(root, store)) == [
        f"{deletion.DELETED_PREFIX}run-half-123456",
        f"{deletion.DELETED_PREFIX}run-results-abcdef", "run-created"]
    for run_id in ("run-kept", "run-half"):
        assert task_bundle.read_task_dir(task_bundle.task_dir(root, run_id)) == BUNDLE
    assert sorted(p.name for p in root.iterdir()) == [
        task_bundle.SHARED_DIR, "run-half", "run-kept", "run-lost"]


def test_claims_count_live_runs_for_data_and_every_kept_run_for_images(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    resources = RunResources(store)
    store.create_run("run-live", {})
    _finished(store, "run-done")
    resources.claim("run-done", DATA_VOLUME, "vol-done")
    resources.claim("run-done", TASK_IMAGE, "img-done")
    resources.claim("run-live", DATA_VOLUME, "vol-live")
    resources.claim("run-creating", TASK_IMAGE, "img-new")  # its row is not written yet
    assert not resources.data_volume_claimed("vol-done")
    assert resources.data_volume_claimed("vol-live")
    assert resources.image_claimed("img-done") and resources.image_claimed("img-new")
    assert resources.drop_dangling() == 1  # at the next start, no create is in flight
    assert not resources.image_claimed("img-new")


def test_retention_selects_only_finished_runs_past_the_policy(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    for i in range(5):
        _finished(store, f"run-{i}", RunState.FAILED if i == 2 else RunState.SUCCEEDED)
    store.create_run("run-live", {})
    store.create_run("run-paused", {})
    store.pause_run("run-paused", "llm down")
    with store.transaction() as tx:  # run-i finished i days before "now"
        for i in range(5):
            tx.db.execute("UPDATE runs SET updated_at = ? WHERE id = ?",
                          (1_000_000.0 - i * 86400.0, f"run-{i}"))
        tx.db.execute("UPDATE runs SET updated_at = 0 WHERE id IN ('run-live', "
                      "'run-paused')")
    now = 1_000_000.0 + 3600.0
    assert expired_runs(store, RetentionPolicy(), now) == []  # off by default
    assert expired_runs(store, RetentionPolicy(max_finished_runs=2), now) == [
        "run-4", "run-3", "run-2"]
    assert expired_runs(store, RetentionPolicy(max_age_days=2.5), now) == ["run-4", "run-3"]
    assert expired_runs(store, RetentionPolicy(max_finished_runs=0), now) == [
        "run-4", "run-3", "run-2", "run-1", "run-0"]
    with pytest.raises(ValueError, match=r"retention\.max_age_days"):
        RetentionPolicy(max_age_days=0).validate()

    janitor = Janitor(_deleter(store, tmp_path / "runs"), RetentionPolicy(max_finished_runs=3))
    report = janitor.sweep(now)  # the engine is down: the store part still happens
    assert report.deleted == ["run-4", "run-3"]
    remaining = {r.id for r in store.list_runs(50, None)[0]}
    assert remaining == {"run-0", "run-1", "run-2", "run-live", "run-paused"}
    janitor.close()
    assert janitor.sweep(now + 10 * 86400).deleted == []  # closed: no sweep


def test_disk_budget_refuses_growth_past_its_limit_naming_it(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"\1" * 300_000)
    budget = DiskBudget(tmp_path, 400_000)
    budget.check(50_000)
    with pytest.raises(CapacityError) as err:
        budget.check(200_000)
    assert err.value.resource == BUDGET_KEY
    used = usage_bytes(tmp_path)
    assert f"is 400000 bytes; {tmp_path} uses {used}" in str(err.value)
    assert "adds 200000" in str(err.value)
    default = DiskBudget.of(tmp_path / "not-yet", None)
    assert default.max_bytes > 0  # a quarter of the file system it will live on


def test_retention_and_budget_settings_come_from_file_and_environment(tmp_path: Path) -> None:
    from controller.config import ConfigError
    from controller.config_file import load

    path = tmp_path / "bilevel.toml"
    path.write_text('[server]\nstate_dir_max_bytes = "20GiB"\n'
                    '[retention]\nmax_age_days = 30\nsweep_seconds = 60\n')
    config = load(path, {"BILEVEL_RETENTION__MAX_FINISHED_RUNS": "500"}, {})
    assert config.state_dir_max_bytes == 20 << 30
    assert config.retention == RetentionPolicy(max_age_days=30.0, max_finished_runs=500,
                                               sweep_seconds=60.0)
    assert load(None, {}, {}).retention == RetentionPolicy()  # off by default
    with pytest.raises(ConfigError, match=r"retention\.max_finished_runs .*must be >= 0"):
        load(None, {"BILEVEL_RETENTION__MAX_FINISHED_RUNS": "-1"}, {})
    with pytest.raises(ConfigError, match=r"state_dir_max_bytes .*must be at least 1MiB"):
        load(None, {"BILEVEL_SERVER__STATE_DIR_MAX_BYTES": "1KiB"}, {})
