"""The store's database: one SQLite file (WAL), the schema of every table in it, and
the one connection and lock that the store's modules (runs.py: runs, trials and events;
mechanisms.py, llm_calls.py, memory.py, resources.py) read and write through.

Every write is a `Database.transaction`; one that appends run events (`Tx.event`) tells
the listeners after its commit, so a client never sees an event whose state is not on
disk. Events carry a gap-free per-run sequence number.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.principals import SHARED
from controller.store.records import EventKind, NotFoundError

STORE_FILE = "bilevel.sqlite3"  # the store's file in a state dir
# Runs, their trials and their events (store/runs.py).
RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    trials_done INTEGER NOT NULL DEFAULT 0,
    baseline_val_bpb REAL,
    best_val_bpb REAL,
    best_trial INTEGER,
    last_status TEXT,
    stop_reason TEXT NOT NULL DEFAULT '',
    elapsed_seconds REAL NOT NULL DEFAULT 0,
    llm_tokens_used INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL DEFAULT '',
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    description TEXT NOT NULL,
    changes_json TEXT NOT NULL,
    status TEXT,
    val_bpb REAL,
    memory_gb REAL NOT NULL DEFAULT 0,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    job_status TEXT NOT NULL DEFAULT '',
    exception_json TEXT,
    seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
# Every LLM call of a run (store/llm_calls.py), and what each endpoint accepts
# (store/llm_capabilities.py).
LLM_CALLS = """
CREATE TABLE IF NOT EXISTS llm_calls (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    trial INTEGER NOT NULL,
    call INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    proposal_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    record_json TEXT NOT NULL,
    error TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS llm_calls_by_time ON llm_calls(time);
CREATE TABLE IF NOT EXISTS llm_capabilities (
    base_url TEXT NOT NULL,
    model TEXT NOT NULL,
    values_json TEXT NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (base_url, model)
);
"""
# Lessons kept for later runs, and what each search strategy gained in a run of one
# strategy (store/memory.py).
LESSONS = """
CREATE TABLE IF NOT EXISTS lessons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    delta REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS lessons_by_task ON lessons (task, id);
CREATE TABLE IF NOT EXISTS strategy_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    run_id TEXT NOT NULL,
    strategy TEXT NOT NULL,
    trials INTEGER NOT NULL,
    gain REAL NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS strategy_results_by_task ON strategy_results (task, id);
"""
# Mechanism hook calls, the mechanisms a run tried, the outer levels' state
# (store/mechanisms.py).
MECHANISMS = """
CREATE TABLE IF NOT EXISTS mechanism_calls (
    run_id TEXT NOT NULL REFERENCES runs(id),
    trial INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    hook TEXT NOT NULL,
    effect TEXT NOT NULL,
    effective INTEGER NOT NULL,
    seconds REAL NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (run_id, trial, seq)
);
CREATE TABLE IF NOT EXISTS mechanisms (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    ord INTEGER NOT NULL,
    row_json TEXT NOT NULL,
    state_json TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS outer_state (
    run_id TEXT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""
# Engine objects each run claims (store/resources.py).
RESOURCES = """
CREATE TABLE IF NOT EXISTS run_resources (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (run_id, kind, name)
);
CREATE INDEX IF NOT EXISTS run_resources_by_name ON run_resources (kind, name);
"""
# Each trial's progress curve as its candidate reported it (store/curves.py): untrusted,
# bounded (research/level1/progress.py caps its points).
CURVES = """
CREATE TABLE IF NOT EXISTS trial_curves (
    run_id TEXT NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    points_json TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""
SCHEMA = RUNS + LLM_CALLS + LESSONS + MECHANISMS + RESOURCES + CURVES
# Columns added after the first release; a store created before gets them on open.
MIGRATIONS = (
    ("runs", "noise_sigma", "REAL"),
    ("runs", "llm_cost_usd", "REAL NOT NULL DEFAULT 0"),
    ("trials", "hypothesis", "TEXT NOT NULL DEFAULT ''"),
    ("trials", "parent", "INTEGER"),
    ("trials", "fix_of", "INTEGER"),
    ("trials", "proposal_id", "TEXT NOT NULL DEFAULT ''"),
    ("trials", "started_at", "REAL NOT NULL DEFAULT 0"),
    ("trials", "ended_at", "REAL NOT NULL DEFAULT 0"),
    ("trials", "llm_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("trials", "llm_cost_usd", "REAL NOT NULL DEFAULT 0"),
    # "baseline", "proposer", "mechanism:<name>" (its suggestion ran), "+filter" when a
    # filter replaced it: what the trial's credit goes to (research/level2/wiring.py).
    ("trials", "proposal_source", "TEXT NOT NULL DEFAULT ''"),
    ("trials", "node", "TEXT NOT NULL DEFAULT ''"),  # Ray node id(s) (sandbox/ray_backend.py)
    # The Level 2 portfolio arm that proposed the trial and its probability (propensity).
    ("trials", "arm", "TEXT NOT NULL DEFAULT ''"),
    ("trials", "arm_probability", "REAL"),
    # Why the LLM gave no usable proposal for the trial (another proposer made it).
    ("trials", "llm_failure", "TEXT NOT NULL DEFAULT ''"),
    # The principal the run belongs to; runs made before principals are "shared"'s.
    ("runs", "owner", f"TEXT NOT NULL DEFAULT '{SHARED.name}'"),
    # The principal a lesson's run belonged to (lessons made before principals: "shared").
    ("lessons", "owner", f"TEXT NOT NULL DEFAULT '{SHARED.name}'"),
)
# After the migrations: ListRuns of one principal, newest first.
INDEXES = "CREATE INDEX IF NOT EXISTS runs_by_owner ON runs (owner, created_at, id);"

Listener = Callable[[str], None]


class Tx:
    """One open transaction; `event` appends with the next sequence number."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.appended = False

    def event(self, run_id: str, kind: EventKind, payload: dict[str, Any]) -> None:
        row = self.db.execute("UPDATE runs SET last_seq = last_seq + 1 WHERE id = ? "
                              "RETURNING last_seq", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError("run", run_id)
        self.db.execute("INSERT INTO events (run_id, seq, time, kind, payload_json) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (run_id, row[0], time.time(), kind.value, json.dumps(payload)))
        self.appended = True


class Database:
    """The store file at `path` (created, or migrated, on open). Thread-safe; durable on
    commit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        for table, column, kind in MIGRATIONS:
            present = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._db.executescript(INDEXES)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def subscribe(self, listener: Listener) -> None:
        """`listener(run_id)` is called after each commit that appended events."""
        self._listeners.append(listener)

    @contextmanager
    def transaction(self, run_id: str | None = None) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error); the listeners hear of
        `run_id` after a commit that appended its events."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            tx = Tx(self._db)
            try:
                yield tx
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if tx.appended and run_id is not None:
            for listener in self._listeners:
                listener(run_id)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()
