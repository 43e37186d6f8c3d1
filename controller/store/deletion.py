"""Deleting a run from the state dir: its rows, then its files.

The rows go in one transaction: the run and every row of a table whose `run_id`
references runs(id) (trials, events, mechanism calls, LLM calls, ..., found in the
schema, so a table added later is covered), and the run's resource claims. Lessons
(store/memory.py) stay: they are what later runs learn, not the run's record.

The run's folder is renamed aside (runs/.deleted-<run_id>-<tag>) before the rows go and
removed after they went, so a crash leaves either the run whole (the rows are still
there: `remove_orphan_files` renames its folder back at the next start) or a folder
aside that no run owns (removed then). A folder that holds only a task copy and no run
row is what a crash during CreateRun leaves (the task is stored before the run's row
exists): removed at the next start too, when no create can be in flight. A folder with
trial artifacts and no row is never removed.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import uuid
from pathlib import Path

from controller.store import task_bundle
from controller.store.records import NotFoundError, RunRecord
from controller.store.runs import RunStore, run_from_row

DELETED_PREFIX = ".deleted-"
_RUN_DIR = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def dependent_tables(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(table, column) of every foreign key to runs(id)."""
    out = []
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "ORDER BY name")]
    for table in tables:
        for fk in db.execute(f"PRAGMA foreign_key_list({table})"):
            if fk["table"] == "runs":
                out.append((table, fk["from"]))
    return out


def delete_run_rows(store: RunStore, run_id: str) -> RunRecord:
    """Remove run `run_id` and its rows in one transaction; returns what was removed.
    NotFoundError when no such run exists (a second delete of it, too)."""
    with store.transaction() as tx:
        row = tx.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError("run", run_id, "list runs with `bilevel runs`")
        for table, column in dependent_tables(tx.db):
            tx.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))
        tx.db.execute("DELETE FROM run_resources WHERE run_id = ?", (run_id,))
        tx.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    return run_from_row(row)


def delete_run(store: RunStore, artifacts_root: Path, run_id: str) -> tuple[RunRecord, int]:
    """Delete the run's rows and files, and any task copy only it used; returns its
    record and the bytes freed (files whose last link this removed). NotFoundError
    when no such run exists."""
    store.get_run(run_id)  # NotFoundError before anything moves
    folder = artifacts_root / run_id
    aside = artifacts_root / f"{DELETED_PREFIX}{run_id}-{uuid.uuid4().hex[:6]}"
    moved = _RUN_DIR.match(run_id) is not None and folder.is_dir()
    if moved:
        folder.rename(aside)
    try:
        record = delete_run_rows(store, run_id)
    except BaseException:
        if moved:
            aside.rename(folder)
        raise
    freed = _remove_tree(aside) if moved else 0
    return record, freed + task_bundle.release_unused(artifacts_root)


def remove_orphan_files(artifacts_root: Path, store: RunStore) -> list[str]:
    """At start-up: finish or undo what a crash left of a deletion, and remove the
    task copy of a create that never got its row; returns the names handled."""
    if not artifacts_root.is_dir():
        return []
    known = {r["id"] for r in store.query("SELECT id FROM runs")}
    handled = []
    for entry in sorted(artifacts_root.iterdir()):
        name = entry.name
        if not entry.is_dir() or entry.is_symlink():
            continue
        if name.startswith(DELETED_PREFIX):
            run_id = name[len(DELETED_PREFIX):].rpartition("-")[0]
            if run_id in known and not (artifacts_root / run_id).exists():
                entry.rename(artifacts_root / run_id)  # its rows are still there
            else:
                _remove_tree(entry)
            handled.append(name)
        elif _RUN_DIR.match(name) and name not in known and \
                [p.name for p in entry.iterdir()] in ([], ["task"]):
            _remove_tree(entry)
            handled.append(name)
    if handled:
        task_bundle.release_unused(artifacts_root)
    return handled


def _remove_tree(folder: Path) -> int:
    """rmtree that counts the bytes it frees (files with no other link)."""
    freed = 0
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if st.st_nlink <= 1 or path.is_dir():
            freed += st.st_blocks * 512
    shutil.rmtree(folder, ignore_errors=True)
    return freed
