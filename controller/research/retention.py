"""Retention of finished runs: which runs the controller's periodic sweep deletes
(research/deletion.py's Janitor runs it).

Retention is off unless configured: deleting results is not undoable, so the operator
chooses how long they stay (`retention.max_age_days`, by the time a run finished) and
how many stay (`retention.max_finished_runs`, the newest). Only finished runs
(succeeded, failed, cancelled) are ever deleted, never a running or paused one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import FieldError
from controller.store.records import RunState

if TYPE_CHECKING:
    from controller.store.runs import RunStore

DAY_SECONDS = 86400.0
_FINISHED = (RunState.SUCCEEDED.value, RunState.FAILED.value, RunState.CANCELLED.value)


@dataclass(frozen=True)
class RetentionPolicy:
    max_age_days: float | None = None  # None: runs are not deleted for their age
    max_finished_runs: int | None = None  # None: no cap on the finished runs kept
    sweep_seconds: float = 600.0  # between two sweeps

    def validate(self) -> None:
        """FieldError naming the key."""
        if self.max_age_days is not None and not self.max_age_days > 0:
            raise FieldError("retention.max_age_days", "must be > 0 (leave it unset to keep "
                             "runs whatever their age)")
        if self.max_finished_runs is not None and self.max_finished_runs < 0:
            raise FieldError("retention.max_finished_runs", "must be >= 0 (leave it unset "
                             "for no cap)")
        if not self.sweep_seconds > 0:
            raise FieldError("retention.sweep_seconds", "must be > 0")

    @property
    def enabled(self) -> bool:
        return self.max_age_days is not None or self.max_finished_runs is not None


def expired_runs(store: RunStore, policy: RetentionPolicy, now: float) -> list[str]:
    """Ids of the finished runs `policy` no longer keeps, oldest first."""
    if not policy.enabled:
        return []
    rows = store.query(f"SELECT id, updated_at FROM runs WHERE state IN "
                       f"({', '.join('?' * len(_FINISHED))}) ORDER BY updated_at DESC, "
                       "rowid DESC", _FINISHED)
    out = []
    for rank, row in enumerate(rows):
        too_many = policy.max_finished_runs is not None and rank >= policy.max_finished_runs
        too_old = policy.max_age_days is not None and \
            now - row["updated_at"] > policy.max_age_days * DAY_SECONDS
        if too_many or too_old:
            out.append(row["id"])
    return out[::-1]
