"""Deleting a run: its rows and files (store/deletion.py), then the engine objects only
it used - its data volumes and this controller's tag of its task image. And the
controller's periodic clean-up (Janitor): retention (research/retention.py), then the
engine objects of its namespace no run needs any more.

A running or paused run is refused unless the caller asks to cancel it first. The engine
part never fails a deletion or a sweep: an object a run claims is kept, one a container
still uses is kept (the engine's 409), an engine that is down keeps everything; each is
reported and logged, and the next sweep removes what is left once nothing uses it. The
sweep removes the namespace's data volumes no running or paused run claims and its task
image tags no kept run claims; other namespaces' objects are never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controller.principals import CONTROLLER, Principal
from controller.research import access
from controller.research.errors import StateConflict
from controller.research.retention import RetentionPolicy, expired_runs
from controller.sandbox.backend import ClaimIndex, RunObjects, Sweep
from controller.sandbox.backend_config import SandboxUnavailable
from controller.store import deletion
from controller.store.artifacts import ArtifactStore
from controller.store.records import NotFoundError, RunRecord
from controller.store.resources import (
    DATA_VOLUME,
    TASK_IMAGE,
    RunResources,
    store_gone,
    store_scope,
)
from controller.store.runs import RunStore

log = structlog.get_logger(__name__)

# The backend's objects; raises SandboxUnavailable when the engine is down.
EngineObjects = Callable[[], RunObjects]


@dataclass
class Deleted:
    """A deleted run, what its deletion freed and what it kept (object -> why)."""

    run: RunRecord
    freed_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


class RunDeleter:
    """`cancel(run_id, by)` stops a run for principal `by` and returns its record
    (RunManager.cancel in a controller); `busy(run_id)` says whether a loop of this
    process still runs it."""

    def __init__(self, store: RunStore, artifacts: ArtifactStore, engine: EngineObjects,
                 cancel: Callable[[str, Principal], RunRecord],
                 busy: Callable[[str], bool] = lambda _run_id: False) -> None:
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.resources = RunResources(store)
        self.index = claim_index(store_scope(artifacts.root.parent), self.resources)
        self._cancel = cancel
        self._busy = busy

    def delete(self, run_id: str, cancel: bool = False,
               by: Principal = CONTROLLER) -> Deleted:
        """Delete a run for principal `by` (default: the controller's own retention).
        Raises NotFoundError (also for a run `by` does not see), PermissionDenied, or
        StateConflict for a run that has not finished (and `cancel` is false) or that is
        still stopping."""
        run = access.changeable(self.store, run_id, by, "delete runs")
        if not run.state.terminal:
            if not cancel:
                raise StateConflict(f"run {run_id}", (
                    f"run {run_id} is {run.state.value}: cancel it first (`bilevel cancel "
                    f"{run_id}`), or delete it with cancel set (`bilevel delete --cancel`)"))
            run = self._cancel(run_id, by)
        if not run.state.terminal or self._busy(run_id):
            raise StateConflict(f"run {run_id}", f"run {run_id} is still stopping; delete "
                                "it again in a moment")
        claims = self.resources.of_run(run_id)
        deleted = Deleted(*deletion.delete_run(self.store, self.artifacts.root, run_id))
        sweep = self.release(claims)
        deleted.removed, deleted.kept = sweep.removed, sweep.kept
        log.info("run deleted", run_id=run_id, freed_bytes=deleted.freed_bytes,
                 removed=sweep.removed, kept=sweep.kept)
        return deleted

    def release(self, claims: list[tuple[str, str]]) -> Sweep:
        """Remove the claimed engine objects nothing else claims or uses."""
        sweep = Sweep()
        if not claims:
            return sweep
        try:
            objects = self.engine()
            if any(kind == DATA_VOLUME for kind, _ in claims):  # the run's holds go first
                objects.release_holds(self.index, sweep)
            for kind, name in claims:
                if kind == DATA_VOLUME:
                    objects.remove_data(name, self.index, sweep)
                elif kind == TASK_IMAGE:
                    objects.remove_task_image(name, self.index, sweep)
        except SandboxUnavailable as exc:
            log.warning("engine objects of a deleted run kept; a later sweep removes them",
                        error=str(exc))
            for _, name in claims:
                if name not in sweep.removed:
                    sweep.kept.setdefault(name, f"the sandbox engine is unavailable: {exc}")
        return sweep


@dataclass
class JanitorReport:
    deleted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


class Janitor:
    """Thread-safe: one sweep at a time; none after close()."""

    def __init__(self, deleter: RunDeleter, policy: RetentionPolicy) -> None:
        self.deleter = deleter
        self.policy = policy
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Wait for a sweep in flight; later sweeps do nothing (the store is closing)."""
        with self._lock:
            self._closed = True

    def sweep(self, now: float | None = None) -> JanitorReport:
        with self._lock:
            return JanitorReport() if self._closed else self._sweep(now)

    def _sweep(self, now: float | None) -> JanitorReport:
        report = JanitorReport()
        for run_id in expired_runs(self.deleter.store, self.policy, now or time.time()):
            try:
                deleted = self.deleter.delete(run_id)
            except (NotFoundError, StateConflict):
                continue  # deleted by a client meanwhile
            report.deleted.append(run_id)
            report.removed += deleted.removed
        try:
            sweep = self.deleter.engine().sweep(self.deleter.index)
            report.removed += sweep.removed
            report.kept.update(sweep.kept)
        except SandboxUnavailable as exc:
            log.info("engine sweep skipped; the next one retries", error=str(exc))
        if report.deleted:
            log.info("retention deleted finished runs", runs=report.deleted)
        return report


def claim_index(store: str, resources: RunResources) -> ClaimIndex:
    """What the store `resources` reads says about the objects its runs claim."""
    return ClaimIndex(store, resources.run_live, resources.data_volume_claimed,
                      resources.image_claimed, store_gone)
