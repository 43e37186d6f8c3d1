"""Trials' progress curves in the store: what each candidate reported while it trained
(research/level1/progress.py), one bounded row per trial, replaced as the curve grows.

The points are the candidate's own claims, never a result: only pruning reads them to
stop a trial, and people and the proposer see them as untrusted. A point is
[step, value] with value null where the candidate reported a non-finite number.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from controller.store.db import Database

Point = tuple[int, float | None]


def save(db: Database, run_id: str, index: int, points: Sequence[Point]) -> None:
    """Replace trial `index`'s curve (the caller bounds its length)."""
    with db.transaction() as tx:
        tx.db.execute("INSERT INTO trial_curves (run_id, idx, points_json, updated_at) "
                      "VALUES (?, ?, ?, ?) ON CONFLICT (run_id, idx) DO UPDATE SET "
                      "points_json = excluded.points_json, updated_at = excluded.updated_at",
                      (run_id, index, json.dumps([list(p) for p in points]), time.time()))


def load(db: Database, run_id: str) -> dict[int, list[Point]]:
    """Every stored curve of the run: trial index -> [(step, value), ...] by step."""
    rows = db.query("SELECT idx, points_json FROM trial_curves WHERE run_id = ? ORDER BY idx",
                    (run_id,))
    return {int(r["idx"]): [(int(s), None if v is None else float(v))
                            for s, v in json.loads(r["points_json"])] for r in rows}
