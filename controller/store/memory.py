"""What later runs of a task learn from finished ones: lessons distilled from their
trials, offered to LLM proposers' prompts, and what each search strategy gained in a
run that used it alone, from which Level 2's portfolio takes its lead (a second run
starts with the strategy that won the first). Only the controller reads them: the
sandbox and the evaluator never do. Each record belongs to the principal whose run it
came from (lessons made before principals: "shared")."""

from __future__ import annotations

import time
from dataclasses import dataclass

from controller.store.db import Database

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
    owner: str = ""  # the principal whose run it came from (set when stored)


@dataclass(frozen=True)
class StrategyResult:
    """One finished run that searched with one strategy alone (no portfolio): what it
    gained, baseline loss minus best loss (on the final check's fresh seeds when it ran
    one; positive: better)."""

    task: str
    run_id: str
    strategy: str
    trials: int  # the run's trials, its baseline included
    gain: float
    owner: str = ""


class MemoryStore:
    def __init__(self, store: Database) -> None:
        self.store = store

    def add(self, lessons: list[Lesson], owner: str) -> None:
        """Store lessons of a run that belongs to principal `owner`."""
        now = time.time()
        with self.store.transaction() as tx:
            for lesson in lessons:
                assert lesson.kind in KINDS, lesson.kind
                tx.db.execute("INSERT INTO lessons (task, run_id, kind, text, delta, "
                              "created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (lesson.task, lesson.run_id, lesson.kind, lesson.text,
                               lesson.delta, now, owner))

    def add_strategy_result(self, result: StrategyResult) -> None:
        with self.store.transaction() as tx:
            tx.db.execute("INSERT INTO strategy_results (task, run_id, strategy, trials, "
                          "gain, owner, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (result.task, result.run_id, result.strategy, result.trials,
                           result.gain, result.owner, time.time()))

    def strategy_results(self, task: str, owner: str | None = None,
                         before: float | None = None,
                         limit: int = 1000) -> list[StrategyResult]:
        """Newest first; of one task and one owner (None: every owner), recorded before
        time `before` (None: any time), so a resumed run reads what it started with."""
        where, args = _where(task, owner, before)
        rows = self.store.query(f"SELECT * FROM strategy_results{where} ORDER BY id DESC "
                                "LIMIT ?", (*args, limit))
        return [StrategyResult(task=r["task"], run_id=r["run_id"], strategy=r["strategy"],
                               trials=r["trials"], gain=r["gain"], owner=r["owner"])
                for r in rows]

    def list(self, task: str | None = None, limit: int = 1000,
             owner: str | None = None) -> list[Lesson]:
        """Newest first; of one task (None: all) and one owner (None: every owner)."""
        where, args = _where(task, owner)
        rows = self.store.query(f"SELECT * FROM lessons{where} ORDER BY id DESC LIMIT ?",
                                (*args, limit))
        return [Lesson(task=r["task"], run_id=r["run_id"], kind=r["kind"], text=r["text"],
                       delta=r["delta"], id=r["id"], created_at=r["created_at"],
                       owner=r["owner"]) for r in rows]

    def clear(self, task: str | None = None, owner: str | None = None) -> int:
        """Delete lessons and strategy results of one task (None: all) and one owner
        (None: every owner); returns how many lessons."""
        where, args = _where(task, owner)
        with self.store.transaction() as tx:
            tx.db.execute(f"DELETE FROM strategy_results{where}", args)
            return int(tx.db.execute(f"DELETE FROM lessons{where}", args).rowcount)


def _where(task: str | None, owner: str | None,
           before: float | None = None) -> tuple[str, tuple[str | float, ...]]:
    """The WHERE clause of one task, one owner and records made before `before` (each
    None: any)."""
    terms = [(f"{column} {op} ?", value) for column, op, value in (
        ("task", "=", task), ("owner", "=", owner), ("created_at", "<", before))
        if value]
    if not terms:
        return "", ()
    return (" WHERE " + " AND ".join(term for term, _ in terms),
            tuple(value for _, value in terms))
