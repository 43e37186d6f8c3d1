"""DeleteRun on a state dir no controller holds (`bilevel delete` without --server).

It takes the state dir's lock for the deletion, so no controller starts on it meanwhile
(one that tries is told the state dir is in use). No loop runs a run here, so a run left
running or paused is cancelled in the store. The engine part uses the configured Docker
engine and namespace (sandbox/factory.py's run_objects); when the engine is unreachable
the objects are kept and reported, and the next controller's sweep on that namespace
removes them.
"""

from __future__ import annotations

import os

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.audit.offline import recorded
from controller.config import ServerConfig
from controller.principals import LOCAL, Principal
from controller.research.access import cancelled_by
from controller.research.deletion import RunDeleter
from controller.sandbox.backend import RunObjects
from controller.sandbox.factory import run_objects
from controller.store.artifacts import ArtifactStore
from controller.store.db import STORE_FILE
from controller.store.records import NotFoundError, RunRecord, RunState
from controller.store.runs import RunStore

DELETE_RUN = "/bilevel.v1.RunService/DeleteRun"


def delete_locally(config: ServerConfig, request: rpb.DeleteRunRequest) -> rpb.DeleteRunResponse:
    """Raises NotFoundError, StateConflict, or ConfigError when a controller holds the
    state dir after all."""
    from controller.api.server import _lock_state_dir

    state_dir = config.state_dir
    if not (state_dir / STORE_FILE).exists():  # nothing to delete: do not create a store
        raise NotFoundError("run", request.run_id, "list runs with `bilevel runs`")
    lock = _lock_state_dir(state_dir)
    store = RunStore(state_dir / STORE_FILE)
    opened: list[RunObjects] = []

    def engine() -> RunObjects:
        if not opened:
            opened.append(run_objects(config.executor))
        return opened[0]

    def cancel(run_id: str, by: Principal) -> RunRecord:
        reason = cancelled_by(by)
        store.finish_run(run_id, RunState.CANCELLED, reason, reason,
                         {"state": RunState.CANCELLED.value, "reason": reason})
        return store.get_run(run_id)

    try:  # in the audit log, as a controller would record it (not at all if it cannot)
        with recorded(state_dir, LOCAL, DELETE_RUN, request.run_id,
                      request.ByteSize()) as outcome:
            deleted = RunDeleter(store, ArtifactStore(state_dir / "runs"), engine,
                                 cancel).delete(
                request.run_id, request.cancel, by=LOCAL)  # the state dir's owner
            response = rpb.DeleteRunResponse(
                run_id=request.run_id, freed_bytes=deleted.freed_bytes,
                removed=deleted.removed, kept=deleted.kept)
            outcome.bytes_out = response.ByteSize()
    finally:
        for objects in opened:
            objects.close()
        store.close()
        os.close(lock)
    return response
