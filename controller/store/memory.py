"""Lessons distilled from finished runs, per task, offered to proposers of later runs.
Only prompts read them: the sandbox and the evaluator never do."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.store.runs import RunStore

SCHEMA = """
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
"""
KINDS = ("helped", "hurt", "crashed")


@dataclass(frozen=True)
class Lesson:
    task: str
    run_id: str
    kind: str  # "helped", "hurt" or "crashed"
    text: str
    delta: float | None = None  # val_bpb change against the incumbent (negative: better)
    id: int = 0
    created_at: float = 0.0


class MemoryStore:
    def __init__(self, store: RunStore) -> None:
        self.store = store

    def add(self, lessons: list[Lesson]) -> None:
        now = time.time()
        with self.store.transaction() as tx:
            for lesson in lessons:
                assert lesson.kind in KINDS, lesson.kind
                tx.db.execute("INSERT INTO lessons (task, run_id, kind, text, delta, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                              (lesson.task, lesson.run_id, lesson.kind, lesson.text,
                               lesson.delta, now))

    def list(self, task: str | None = None, limit: int = 1000) -> list[Lesson]:
        """Newest first."""
        sql = "SELECT * FROM lessons"
        args: tuple[object, ...] = ()
        if task:
            sql += " WHERE task = ?"
            args = (task,)
        rows = self.store.query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [Lesson(task=r["task"], run_id=r["run_id"], kind=r["kind"], text=r["text"],
                       delta=r["delta"], id=r["id"], created_at=r["created_at"]) for r in rows]

    def clear(self, task: str | None = None) -> int:
        """Delete lessons (of one task, or all); returns how many."""
        with self.store.transaction() as tx:
            if task:
                cur = tx.db.execute("DELETE FROM lessons WHERE task = ?", (task,))
            else:
                cur = tx.db.execute("DELETE FROM lessons")
            return int(cur.rowcount)
