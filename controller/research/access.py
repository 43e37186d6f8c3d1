"""Who may read or change a run: its owner, and admins (controller/principals.py).

Another principal's run is NotFoundError with exactly the message of a run that does
not exist, so an answer never tells a caller whether someone else's run is there. A
principal that may see a run but not change it (a viewer, its own run) is
PermissionDenied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.principals import PermissionDenied, Principal
from controller.store.records import RUN_HINT, NotFoundError, RunRecord

if TYPE_CHECKING:
    from controller.store.runs import RunStore


def hidden(run_id: str) -> NotFoundError:
    """The error for a run the caller may not see: the unknown run's."""
    return NotFoundError("run", run_id, RUN_HINT)


def readable(store: RunStore, run_id: str, by: Principal) -> RunRecord:
    """The run, if `by` may see it; NotFoundError otherwise."""
    run = store.get_run(run_id)
    if not by.sees(run.owner):
        raise hidden(run_id)
    return run


def changeable(store: RunStore, run_id: str, by: Principal, action: str) -> RunRecord:
    """The run, if `by` may change it: NotFoundError when it may not see it,
    PermissionDenied when it may see but not `action` it."""
    run = readable(store, run_id, by)
    if not by.changes(run.owner):
        raise PermissionDenied(by, action)
    return run


def listed_owner(by: Principal) -> str | None:
    """Whose runs and lessons `by` lists: its own, or everyone's (None) for an admin."""
    return None if by.sees_everyone else by.name


def cancelled_by(principal: Principal) -> str:
    """A cancelled run's stop reason."""
    return f"cancelled by {principal.name}"
