"""Runs as resources: create, cancel, pause/resume, resume after a restart, stop on
shutdown.

Each active run is one InnerLoop in its own thread (its trials run on worker threads
that block on the sandbox); the store is the only shared state.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from controller.llm.errors import LLMConfigError
from controller.llm.settings import LLMAccess
from controller.llm.types import Provider
from controller.research.engine import LazyExecutor
from controller.research.errors import CapacityError, FieldError, StateConflict
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.proposers import build_proposer, build_run_provider
from controller.research.level1.space import ProposalError
from controller.research.outer import attach_outer_levels
from controller.research.settings import RunSettings
from controller.research.task import Task, memory_key
from controller.research.tasks.manifest import MANIFEST, TaskError, load_task_dir
from controller.research.tasks.registry import make_task
from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.image import ImageBuildError
from controller.sandbox.task_image import WheelSource, ensure_task_image
from controller.store import task_bundle
from controller.store.artifacts import ArtifactStore
from controller.store.memory import MemoryStore
from controller.store.records import RunRecord, RunState
from controller.store.runs import RunStore
from mechanisms import library

log = structlog.get_logger(__name__)
MEMORY_IN_PROMPT = 20  # newest lessons of the task offered to a proposer


@dataclass(frozen=True)
class ManagerConfig:
    max_active_runs: int = 4
    llm: LLMAccess = field(default_factory=LLMAccess)
    # Where the host's pip finds a task's requirements (the operator's choice).
    wheels: WheelSource = field(default_factory=WheelSource)


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

    def create(self, settings: RunSettings,
               task_files: Mapping[str, bytes] | None = None) -> RunRecord:
        """Validate and start a run; `task_files`, a task directory a client sent, is
        stored with the run and is its task. Raises FieldError, CapacityError,
        SandboxUnavailable."""
        replay_of = settings.llm.replay_run if settings.llm.provider == "replay" else ""
        settings = self._replay_settings(settings)
        if task_files is None and settings.task.task_sha256 and replay_of:
            task_files = task_bundle.read_task_dir(task_bundle.load_stored(
                self.artifacts.root, replay_of, settings.task.task_sha256))
        files = task_bundle.check_bundle(task_files) if task_files else None
        settings = replace(settings, task=replace(
            settings.task, task_sha256=task_bundle.digest(files) if files else "",
            # the stored task's name replaces this once it is loaded (_store_task)
            preset=settings.task.preset or ("task_files" if files else "")))
        settings.validate()
        with self._lock:
            if self._closing:
                raise CapacityError("controller", "the controller is shutting down")
            if len(self._active) >= self.config.max_active_runs:
                raise CapacityError("runs", f"{self.config.max_active_runs} runs are active "
                                    "(the server's --max-runs); wait for one or cancel one")
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        run: RunRecord | None = None
        try:
            if files is not None:
                settings = self._store_task(run_id, settings, files)
            task = self._task(settings, run_id)
            with self._starting:  # so resume_all never takes a new run for an orphan
                loop = self._loop(run_id, settings, task)  # checks the LLM settings and key
                run = self.store.create_run(run_id, settings.to_dict())
                self._start(run.id, loop)
        except BaseException:
            if files is not None and run is None:  # no run owns the stored copy
                task_bundle.remove(self.artifacts.root, run_id)
            raise
        return run

    def _store_task(self, run_id: str, settings: RunSettings,
                    files: dict[str, bytes]) -> RunSettings:
        """Store the sent task directory with the run and check it with the task loader;
        the run's preset becomes the task's name."""
        folder = task_bundle.store(self.artifacts.root, run_id, files)
        try:
            manifest = load_task_dir(folder)
        except TaskError as exc:  # name the manifest key inside the bundle
            where = "" if exc.field == "task" else f"[{MANIFEST}].{exc.field}"
            raise FieldError(f"{task_bundle.FIELD}{where}", exc.reason) from None
        return replace(settings, task=replace(
            settings.task, preset=manifest.builtin or manifest.name, metric=manifest.metric,
            direction=manifest.direction, self_reported=manifest.self_reported))

    def _task_dir(self, settings: RunSettings, run_id: str) -> Path | None:
        """The run's stored task directory, checked against its recorded hash."""
        if not settings.task.task_sha256:
            return None
        return task_bundle.load_stored(self.artifacts.root, run_id, settings.task.task_sha256)

    def _task_image(self, executor: SandboxExecutor, folder: Path) -> str | None:
        """The task image for the manifest's requirements (built once, then reused)."""
        requirements = load_task_dir(folder).requirements
        if not requirements:
            return None
        field = f"{task_bundle.FIELD}[{MANIFEST}].requirements"
        try:
            tag = ensure_task_image(executor.client, executor.image, requirements,
                                    self.config.wheels)
        except ValueError as exc:
            raise FieldError(field, str(exc)) from None
        except ImageBuildError as exc:
            raise FieldError(field, f"the task image could not be built: {exc}") from None
        executor.allow_image(tag)
        return tag

    def _replay_settings(self, settings: RunSettings) -> RunSettings:
        """A replay re-runs the stored run's own settings with its stored answers."""
        if settings.proposer.kind != "llm" or settings.llm.provider != "replay":
            return settings
        if not settings.llm.replay_run:
            raise FieldError("llm.replay_run", "names the run to replay")
        original = RunSettings.from_dict(self.store.get_run(settings.llm.replay_run).settings)
        if original.proposer.kind != "llm":
            raise FieldError("llm.replay_run", f"run {settings.llm.replay_run} did not use an "
                             "LLM proposer; there is nothing to replay")
        return replace(original, llm=replace(original.llm, provider="replay",
                                             replay_run=settings.llm.replay_run))

    def _task(self, settings: RunSettings, run_id: str) -> Task:
        executor = self.engine.get()
        folder = self._task_dir(settings, run_id)
        image = self._task_image(executor, folder) if folder is not None else None
        task = make_task(settings.task, executor, settings.proposer.mode, task_dir=folder,
                         image=image)
        try:
            task.search_space().without(settings.search.frozen_knobs)
        except ProposalError as exc:
            raise FieldError("search.frozen_knobs", str(exc)) from None
        for m in settings.outer.mechanisms:
            if not m.source and m.name not in library.names():
                raise FieldError("outer.mechanisms", f"no built-in mechanism {m.name!r} "
                                 f"(built-ins: {', '.join(library.names())}); pass a file")
        return task

    def _loop(self, run_id: str, settings: RunSettings, task: Task) -> InnerLoop:
        stop = StopSignal()
        try:
            proposer = build_proposer(run_id, settings, task, self.store, self.config.llm,
                                      stop.event)
        except LLMConfigError as exc:
            raise FieldError("llm.provider", str(exc)) from None
        replaying = settings.llm.provider == "replay" and settings.proposer.kind == "llm"
        memory = MemoryStore(self.store)
        lessons = [m.text for m in memory.list(memory_key(task), MEMORY_IN_PROMPT)] \
            if settings.proposer.use_memory and settings.proposer.kind == "llm" else []
        loop = InnerLoop(run_id, settings, task, proposer, self.store, self.artifacts, stop,
                         lessons=lessons,
                         # no_memory: neither read nor write (ablation repeats stay apart)
                         memory=None if replaying or not settings.proposer.use_memory
                         else memory)
        built: list[Provider] = []

        def provider() -> Provider:  # one provider stack for Levels 1.5 and 2
            if not built:
                built.append(build_run_provider(run_id, settings, self.store,
                                                self.config.llm, stop.event))
            return built[0]

        try:
            attach_outer_levels(loop, self.engine.get(), provider)
        except LLMConfigError as exc:
            raise FieldError("llm.provider", f"{exc}; to run levels 1.5 and 2 offline use "
                             "--config-controller rule --mechanism-source library") from None
        return loop

    def _start(self, run_id: str, loop: InnerLoop) -> None:
        thread = threading.Thread(target=self._run_loop, args=(run_id, loop),
                                  name=f"loop-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = _Active(thread, loop.stop)
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
                loop = self._loop(run.id, settings, self._task(settings, run.id))
            except FieldError as exc:
                if settings.proposer.kind == "llm" and exc.field.startswith("llm."):
                    # e.g. the key is missing in this controller: keep the run for later
                    self.store.pause_run(run.id, f"cannot resume: {exc}")
                    continue
                self.store.finish_run(run.id, RunState.FAILED, f"cannot resume: {exc}", str(exc),
                                      {"state": RunState.FAILED.value,
                                       "reason": f"cannot resume: {exc}"})
                continue
            log.info("resuming run", run_id=run.id, trials_done=run.trials_done)
            self._start(run.id, loop)
            resumed.append(run.id)
        return resumed

    def resume(self, run_id: str) -> RunRecord:
        """Continue a paused run (after an LLM outage, or a missing key now provided).
        Raises NotFoundError, StateConflict (not paused), FieldError, CapacityError."""
        run = self.store.get_run(run_id)
        if run.state is not RunState.PAUSED:
            raise StateConflict(f"run {run_id}", f"run {run_id} is {run.state.value}, not "
                                "paused; only a paused run can be resumed")
        with self._lock:
            if self._closing:
                raise CapacityError("controller", "the controller is shutting down")
            if len(self._active) >= self.config.max_active_runs:
                raise CapacityError("runs", f"{self.config.max_active_runs} runs are active")
        settings = RunSettings.from_dict(run.settings)
        loop = self._loop(run_id, settings, self._task(settings, run_id))
        with self._starting:
            if not self.store.unpause_run(run_id):
                raise StateConflict(f"run {run_id}", f"run {run_id} is no longer paused")
            self._start(run_id, loop)
        log.info("resumed paused run", run_id=run_id)
        return self.store.get_run(run_id)

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
