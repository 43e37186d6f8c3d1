"""Engine objects each run uses, counted in the store: its data volumes and task image.

A run claims an object before it fills, tags or mounts it (the claim is committed
first), so a sweep that asks `data_volume_claimed` or `image_claimed` under the object's
lock never removes what a run is about to use. A claim may precede its run's row: a
task image is claimed while CreateRun is still checking the run. Such a claim counts as
a use until the create fails (`drop_run`) or, after a crash, until the next start
(`drop_dangling`), when no create can be in flight.

Data volumes are needed only by runs that will run jobs again (running or paused);
a task image by any run kept in the store, so deleting its last run frees it.

On the engine, what a store's runs hold is labelled with `store_scope`: the host and the
state dir, one per controller (a state dir has one controller at a time).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from controller.store.db import Database
from controller.store.records import RunState

DATA_VOLUME = "data_volume"
TASK_IMAGE = "task_image"
KINDS = (DATA_VOLUME, TASK_IMAGE)
_LIVE = (RunState.RUNNING.value, RunState.PAUSED.value)


def store_scope(state_dir: Path) -> str:
    """This controller's store as engine labels and tags name it."""
    return f"{socket.gethostname()}:{state_dir.resolve()}"


def store_gone(scope: str) -> bool:
    """Whether the store `scope` names is known to be gone: on this host, with no store
    file (bilevel.sqlite3) in its state dir any more. A store on another host (or in
    another container) is never said to be gone."""
    host, _, path = scope.partition(":")
    return bool(path) and host == socket.gethostname() and \
        not (Path(path) / "bilevel.sqlite3").exists()


class RunResources:
    def __init__(self, store: Database) -> None:
        self.store = store

    def claim(self, run_id: str, kind: str, name: str) -> None:
        """Record that run `run_id` uses engine object `name` (idempotent, durable)."""
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}")
        with self.store.transaction() as tx:
            tx.db.execute("INSERT OR IGNORE INTO run_resources (run_id, kind, name, "
                          "claimed_at) VALUES (?, ?, ?, ?)", (run_id, kind, name, time.time()))

    def of_run(self, run_id: str) -> list[tuple[str, str]]:
        """(kind, name) of every object run `run_id` claimed."""
        rows = self.store.query("SELECT kind, name FROM run_resources WHERE run_id = ? "
                                "ORDER BY kind, name", (run_id,))
        return [(r["kind"], r["name"]) for r in rows]

    def data_volume_claimed(self, name: str) -> bool:
        """Whether a running or paused run (or one being created) uses data volume `name`."""
        rows = self.store.query(
            "SELECT 1 FROM run_resources c LEFT JOIN runs r ON r.id = c.run_id "
            f"WHERE c.kind = ? AND c.name = ? AND (r.id IS NULL OR r.state IN "
            f"({', '.join('?' * len(_LIVE))})) LIMIT 1", (DATA_VOLUME, name, *_LIVE))
        return bool(rows)

    def run_live(self, run_id: str) -> bool:
        """Whether run `run_id` is running or paused (it will run jobs again)."""
        return bool(self.store.query(
            f"SELECT 1 FROM runs WHERE id = ? AND state IN ({', '.join('?' * len(_LIVE))})",
            (run_id, *_LIVE)))

    def image_claimed(self, name: str) -> bool:
        """Whether any run kept in the store (or one being created) uses task image `name`."""
        return bool(self.store.query("SELECT 1 FROM run_resources WHERE kind = ? AND "
                                     "name = ? LIMIT 1", (TASK_IMAGE, name)))

    def drop_run(self, run_id: str) -> None:
        """Forget the claims of a run that was never created (its CreateRun failed)."""
        with self.store.transaction() as tx:
            tx.db.execute("DELETE FROM run_resources WHERE run_id = ?", (run_id,))

    def drop_dangling(self) -> int:
        """Forget claims whose run does not exist: creates a crash cut short. Only at a
        controller's start, when no create is in flight."""
        with self.store.transaction() as tx:
            cur = tx.db.execute("DELETE FROM run_resources WHERE run_id NOT IN "
                                "(SELECT id FROM runs)")
            return int(cur.rowcount)
