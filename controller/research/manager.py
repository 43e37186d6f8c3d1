"""Runs as resources: create, cancel, resume after a restart, stop on shutdown.

Each active run is one InnerLoop in its own thread (its trials block on the sandbox);
the store is the only shared state.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import structlog

from controller.research.engine import LazyExecutor
from controller.research.errors import CapacityError, FieldError, StateConflict
from controller.research.loop import InnerLoop, StopSignal
from controller.research.proposer import Proposer, make_proposer
from controller.research.settings import RunSettings
from controller.research.space import ProposalError
from controller.research.task import Task
from controller.research.tasks.registry import make_task
from controller.store.artifacts import ArtifactStore
from controller.store.records import RunRecord, RunState
from controller.store.runs import RunStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ManagerConfig:
    max_active_runs: int = 4


@dataclass
class _Active:
    thread: threading.Thread
    stop: StopSignal


class RunManager:
    def __init__(self, store: RunStore, artifacts: ArtifactStore, engine: LazyExecutor,
                 config: ManagerConfig | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.config = config or ManagerConfig()
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._closing = False

    def create(self, settings: RunSettings) -> RunRecord:
        """Validate and start a run. Raises FieldError, CapacityError, SandboxUnavailable."""
        settings.validate()
        with self._lock:
            if self._closing:
                raise CapacityError("controller", "the controller is shutting down")
            if len(self._active) >= self.config.max_active_runs:
                raise CapacityError("runs", f"{self.config.max_active_runs} runs are active "
                                    "(the server's --max-runs); wait for one or cancel one")
        loop_parts = self._build(settings)
        with self._starting:  # so resume_all never takes a new run for an orphan
            run = self.store.create_run(f"run-{uuid.uuid4().hex[:12]}", settings.to_dict())
            self._start(run.id, settings, loop_parts)
        return run

    def _build(self, settings: RunSettings) -> tuple[Task, Proposer]:
        executor = self.engine.get()
        task = make_task(settings.task, executor)
        try:
            task.search_space().without(settings.search.frozen_knobs)
        except ProposalError as exc:
            raise FieldError("search.frozen_knobs", str(exc)) from None
        return task, make_proposer(settings.proposer, settings.search.seed)

    def _start(self, run_id: str, settings: RunSettings, parts: tuple[Task, Proposer]) -> None:
        task, proposer = parts
        stop = StopSignal()
        loop = InnerLoop(run_id, settings, task, proposer, self.store, self.artifacts, stop)
        thread = threading.Thread(target=self._run_loop, args=(run_id, loop),
                                  name=f"loop-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = _Active(thread, stop)
        thread.start()

    def _run_loop(self, run_id: str, loop: InnerLoop) -> None:
        try:
            loop.run()
        except Exception as exc:  # a bug or a broken engine: fail the run loudly
            log.exception("run loop failed", run_id=run_id)
            self.store.finish_run(run_id, RunState.FAILED, f"internal error: {exc}",
                                  f"internal error: {exc}",
                                  {"state": RunState.FAILED.value,
                                   "reason": f"internal error: {exc}"})
        finally:
            with self._lock:
                self._active.pop(run_id, None)

    def resume_all(self) -> list[str]:
        """Continue every run a previous controller left running."""
        resumed = []
        with self._starting:
            runs = [r for r in self.store.running_runs() if r.id not in self._active]
        for run in runs:
            settings = RunSettings.from_dict(run.settings)
            try:
                parts = self._build(settings)
            except FieldError as exc:
                self.store.finish_run(run.id, RunState.FAILED, f"cannot resume: {exc}", str(exc),
                                      {"state": RunState.FAILED.value,
                                       "reason": f"cannot resume: {exc}"})
                continue
            log.info("resuming run", run_id=run.id, trials_done=run.trials_done)
            self._start(run.id, settings, parts)
            resumed.append(run.id)
        return resumed

    def cancel(self, run_id: str, wait_seconds: float = 30.0) -> RunRecord:
        """Stop a run; the trial in flight is killed and not counted. Raises NotFoundError
        or StateConflict when the run has already finished."""
        run = self.store.get_run(run_id)
        if run.state.terminal:
            raise StateConflict(f"run {run_id}",
                                f"run {run_id} has already finished ({run.state.value})")
        with self._lock:
            active = self._active.get(run_id)
        if active is None:  # running in the store but no loop here (e.g. resume failed)
            self.store.finish_run(run_id, RunState.CANCELLED, "cancelled by request",
                                  "cancelled by request",
                                  {"state": RunState.CANCELLED.value,
                                   "reason": "cancelled by request"})
        else:
            active.stop.request("cancelled")
            active.thread.join(wait_seconds)
        return self.store.get_run(run_id)

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def shutdown(self, wait_seconds: float = 30.0) -> None:
        """Stop every loop without finishing its run: a restart resumes them."""
        with self._lock:
            self._closing = True
            active = list(self._active.values())
        for a in active:
            a.stop.request("shutdown")
        for a in active:
            a.thread.join(wait_seconds)
