"""Runs as resources: create, cancel, pause/resume, resume after a restart, stop on
shutdown.

Each active run is one InnerLoop in its own thread (its trials run on worker threads
that block on the sandbox); the store is the only shared state.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from controller.errors import FieldError
from controller.llm.errors import LLMConfigError
from controller.llm.keys import principal_key_file
from controller.llm.settings import LLMAccess
from controller.llm.spend import DailySpend
from controller.llm.types import Provider
from controller.principals import SHARED, Principal, require_writes
from controller.quotas import Quotas
from controller.research import access
from controller.research.deletion import claim_index
from controller.research.engine import LazyBackend
from controller.research.errors import CapacityError, StateConflict
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.run_proposer import build_proposer, build_run_provider
from controller.research.level1.space import ProposalError
from controller.research.level2 import portfolio
from controller.research.outer import attach_outer_levels
from controller.research.run_quotas import RunQuotas
from controller.research.settings import RunSettings
from controller.research.task import Task, memory_key
from controller.research.tasks.caps import check_task_caps
from controller.research.tasks.errors import TaskError
from controller.research.tasks.manifest import MANIFEST, load_task_dir
from controller.research.tasks.registry import make_task
from controller.sandbox.backend import RunClaims, SandboxBackend, Sweep
from controller.sandbox.backend_config import SandboxUnavailable
from controller.sandbox.caps import LimitCaps
from controller.sandbox.image import ImageBuildError
from controller.sandbox.task_image import WheelSource
from controller.store import task_bundle
from controller.store.artifacts import ArtifactStore
from controller.store.disk import DiskBudget
from controller.store.llm_calls import CallLog
from controller.store.memory import MemoryStore
from controller.store.records import RunRecord, RunState
from controller.store.resources import DATA_VOLUME, TASK_IMAGE, RunResources, store_scope
from controller.store.runs import RunStore
from mechanisms import library

log = structlog.get_logger(__name__)
MEMORY_IN_PROMPT = 20  # newest lessons of the task offered to a proposer
RUNS_KEY = "server.max_runs"


@dataclass(frozen=True)
class ManagerConfig:
    max_active_runs: int = 4
    llm: LLMAccess = field(default_factory=LLMAccess)
    # Where the host's pip finds a task's requirements (the operator's choice).
    wheels: WheelSource = field(default_factory=WheelSource)
    # The most a sent task's phases may ask for (memory, cpus, wall time, outputs).
    caps: LimitCaps = field(default_factory=LimitCaps)
    # The state dir's disk budget, checked before a run is created (None: unchecked).
    disk: DiskBudget | None = None
    # Runs learn from every principal's lessons and mechanism verdicts (memory.shared);
    # off: from their owner's runs only.
    shared_memory: bool = False
    # Each principal's runs, stored bytes and daily LLM spend (controller/quotas.py).
    quotas: Quotas = field(default_factory=Quotas)


@dataclass
class _Active:
    thread: threading.Thread
    stop: StopSignal
    owner: str = SHARED.name


@dataclass
class _Place:
    """A run place taken by _reserve for `owner`'s run, which is about to store
    `stored_bytes`; `held` until the run takes it or it is released."""

    owner: str = SHARED.name
    stored_bytes: int = 0
    held: bool = True


class RunManager:
    def __init__(self, store: RunStore, artifacts: ArtifactStore, engine: LazyBackend,
                 config: ManagerConfig | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        self.engine = engine
        self.config = config or ManagerConfig()
        self.resources = RunResources(store)  # the engine objects each run claims
        self.scope = store_scope(artifacts.root.parent)  # this store, in engine labels
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._pending: list[_Place] = []  # taken by creates and resumes not started yet
        self.run_quotas = RunQuotas(self.config.quotas, store, artifacts.root)
        self.spend = DailySpend(self.config.quotas, CallLog(store).usage_of)
        self._closing = False

    def create(self, settings: RunSettings, task_files: Mapping[str, bytes] | None,
               owner: Principal) -> RunRecord:
        """Validate and start a run that belongs to `owner`; `task_files`, a task
        directory a client sent, is stored with the run and is its task. Raises
        PermissionDenied (a viewer), FieldError, NotFoundError (a replayed run `owner`
        does not see), CapacityError, SandboxUnavailable."""
        require_writes(owner, "create runs")
        replay_of = settings.llm.replay_run if settings.llm.provider == "replay" else ""
        settings = self._replay_settings(settings, owner)
        if task_files is None and settings.task.task_sha256 and replay_of:
            task_files = task_bundle.read_task_dir(task_bundle.load_stored(
                self.artifacts.root, replay_of, settings.task.task_sha256))
        files = task_bundle.check_bundle(task_files) if task_files else None
        settings = replace(settings, task=replace(
            settings.task, task_sha256=task_bundle.digest(files) if files else "",
            # the stored task's name replaces this once it is loaded (_store_task)
            preset=settings.task.preset or ("task_files" if files else "")))
        settings.validate()
        if self.config.disk is not None:  # RESOURCE_EXHAUSTED naming the budget
            self.config.disk.check(task_bundle.added_bytes(self.artifacts.root, files)
                                   if files else 0)
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        run: RunRecord | None = None
        place = self._reserve(owner.name, sum(len(d) for d in files.values()) if files else 0)
        try:
            if files is not None:
                settings = self._store_task(run_id, settings, files)
            task = self._task(settings, run_id, owner.name)
            with self._starting:  # so resume_all never takes a new run for an orphan
                # checks the LLM settings and key
                loop = self._loop(run_id, settings, task, owner.name)
                run = self.store.create_run(run_id, settings.to_dict(), owner.name)
                self._start(run.id, loop, place)
        except BaseException:
            self._release(place)
            if run is None:  # no run owns the stored copy or the claims
                self.resources.drop_run(run_id)
                if files is not None:
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
            check_task_caps(manifest, self.config.caps)
        except TaskError as exc:  # name the manifest key inside the bundle
            where = "" if exc.field == "task" else f"[{MANIFEST}].{exc.field}"
            raise FieldError(f"{task_bundle.FIELD}{where}", exc.reason) from None
        return replace(settings, task=replace(
            settings.task, preset=manifest.builtin or manifest.name, metric=manifest.metric,
            direction=manifest.direction, self_reported=manifest.self_reported,
            editable=manifest.document.path))

    def _task_dir(self, settings: RunSettings, run_id: str) -> Path | None:
        """The run's stored task directory, checked against its recorded hash."""
        if not settings.task.task_sha256:
            return None
        return task_bundle.load_stored(self.artifacts.root, run_id, settings.task.task_sha256)

    def _task_image(self, executor: SandboxBackend, folder: Path) -> str | None:
        """The run's task image for the manifest's requirements (built once, then
        reused), claimed for the run (the executor is the run's view)."""
        requirements = load_task_dir(folder).requirements
        if not requirements:
            return None
        field = f"{task_bundle.FIELD}[{MANIFEST}].requirements"
        try:
            return executor.ensure_task_image(requirements, self.config.wheels)
        except ImageBuildError as exc:
            raise FieldError(field, f"the task image could not be built: {exc}") from None
        except ValueError as exc:
            raise FieldError(field, str(exc)) from None

    def _replay_settings(self, settings: RunSettings, owner: Principal) -> RunSettings:
        """A replay re-runs the stored run's own settings with its stored answers; only a
        run `owner` sees may be replayed (NotFoundError otherwise)."""
        if settings.proposer.kind != "llm" or settings.llm.provider != "replay":
            return settings
        if not settings.llm.replay_run:
            raise FieldError("llm.replay_run", "names the run to replay")
        original = RunSettings.from_dict(
            access.readable(self.store, settings.llm.replay_run, owner).settings)
        if original.proposer.kind != "llm":
            raise FieldError("llm.replay_run", f"run {settings.llm.replay_run} did not use an "
                             "LLM proposer; there is nothing to replay")
        return replace(original, llm=replace(original.llm, provider="replay",
                                             replay_run=settings.llm.replay_run))

    def _task(self, settings: RunSettings, run_id: str, owner: str) -> Task:
        # The run's view of the backend: its jobs are labelled with the run id and its
        # owner, and each data reference and task image it uses is claimed for it first
        # (sandbox/backend.py).
        claims = RunClaims(self.scope,
                           functools.partial(self.resources.claim, run_id, DATA_VOLUME),
                           functools.partial(self.resources.claim, run_id, TASK_IMAGE))
        executor = self.engine.get().for_owner(run_id, principal=owner, claims=claims)
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

    def _loop(self, run_id: str, settings: RunSettings, task: Task, owner: str,
              created_at: float | None = None) -> InnerLoop:
        """The run's loop; `created_at` of a run being resumed (None: a new run)."""
        stop = StopSignal()
        # The owner's own key where the operator mapped one (llm/keys.py); the server's
        # key is spent within the owner's daily LLM quota.
        llm = self.config.llm.for_owner(owner)
        own_key = principal_key_file(llm, settings.llm.provider) is not None
        claim = None if own_key else functools.partial(self.spend.claim, owner)
        replaying = settings.llm.provider == "replay" and settings.proposer.kind == "llm"
        memory = MemoryStore(self.store)
        # Whose lessons and mechanism verdicts the run learns from (None: everyone's).
        memory_owner = None if self.config.shared_memory else owner
        lead = None  # the portfolio starts with the strategy that won earlier runs
        if not settings.outer.portfolio_lead and settings.proposer.use_memory and \
                settings.outer.portfolio_arms(settings.proposer.kind):
            earlier = memory.strategy_results(memory_key(task), owner=memory_owner,
                                              before=created_at or time.time())
            lead = portfolio.lead_from([(r.strategy, r.gain) for r in earlier])
            log.info("portfolio lead from memory", run_id=run_id, lead=lead,
                     runs=len(earlier))
        try:
            proposer = build_proposer(run_id, settings, task, self.store, llm, stop.event,
                                      claim, lead)
        except LLMConfigError as exc:
            raise FieldError("llm.provider", str(exc)) from None
        lessons = [m.text for m in memory.list(memory_key(task), MEMORY_IN_PROMPT,
                                               owner=memory_owner)] \
            if settings.proposer.use_memory and settings.proposer.kind == "llm" else []
        loop = InnerLoop(run_id, settings, task, proposer, self.store, self.artifacts, stop,
                         lessons=lessons,
                         # no_memory: neither read nor write (ablation repeats stay apart)
                         memory=None if replaying or not settings.proposer.use_memory
                         else memory, memory_owner=memory_owner)
        built: list[Provider] = []

        def provider() -> Provider:  # one provider stack for Levels 1.5 and 2
            if not built:
                built.append(build_run_provider(run_id, settings, self.store,
                                                llm, stop.event, claim))
            return built[0]

        try:
            attach_outer_levels(loop, self.engine.get().for_owner(run_id, principal=owner),
                                provider)
        except LLMConfigError as exc:
            raise FieldError("llm.provider", f"{exc}; to run levels 1.5 and 2 offline use "
                             "--config-controller rule --mechanism-source library") from None
        return loop

    def _reserve(self, owner: str, stored_bytes: int = 0) -> _Place:
        """A place for `owner`'s run about to start (storing `stored_bytes`), or
        CapacityError naming the limit: the server's max_runs, the owner's runs and
        stored_bytes quotas (run_quotas.py). The checks and the claim are one step under
        the lock, so concurrent creates never start more than a limit allows. The place
        becomes the run's when it starts (_start)."""
        limit = self.config.max_active_runs
        with self._lock:
            if self._closing:
                raise CapacityError("controller", "the controller is shutting down")
            used = len(self._active) + len(self._pending)
            if used >= limit:
                raise CapacityError(RUNS_KEY, (
                    f"{used} of the {limit} runs this server runs at once ({RUNS_KEY}, "
                    "--max-runs) are active or starting; wait for one or cancel one"))
            pending = [p for p in self._pending if p.owner == owner]
            self.run_quotas.check(
                owner, sum(a.owner == owner for a in self._active.values()) + len(pending),
                sum(p.stored_bytes for p in pending), stored_bytes)
            place = _Place(owner, stored_bytes)
            self._pending.append(place)
        return place

    def _release(self, place: _Place) -> None:
        """Give back a place no run took (a failed create or resume); once only."""
        with self._lock:
            if place.held:
                place.held = False
                self._pending.remove(place)

    def _start(self, run_id: str, loop: InnerLoop, place: _Place | None = None,
               owner: str = SHARED.name) -> None:
        """Start the run's loop, as `place`'s owner's run (or `owner`'s without one)."""
        thread = threading.Thread(target=self._run_loop, args=(run_id, loop),
                                  name=f"loop-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = _Active(thread, loop.stop,
                                           place.owner if place is not None else owner)
            if place is not None and place.held:  # the run holds it now, as an active run
                place.held = False
                self._pending.remove(place)
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
            self._release_holds()

    def _release_holds(self) -> None:
        """A finished run holds its data volumes no more (a paused one still does); the
        controller's sweep removes the volumes once nothing holds them."""
        if not self.engine.ready:  # no engine was reached: nothing was held
            return
        try:
            self.engine.get().release_holds(claim_index(self.scope, self.resources), Sweep())
        except SandboxUnavailable as exc:
            log.info("holds of finished runs kept; the next sweep releases them",
                     error=str(exc))

    def resume_all(self) -> list[str]:
        """Continue every run a previous controller left running."""
        resumed = []
        with self._starting:
            runs = [r for r in self.store.running_runs() if r.id not in self._active]
        for run in runs:
            settings = RunSettings.from_dict(run.settings)
            try:
                loop = self._loop(run.id, settings, self._task(settings, run.id, run.owner),
                                  run.owner, run.created_at)
            except FieldError as exc:
                if settings.proposer.kind == "llm" and exc.field.startswith("llm."):
                    # e.g. the key is missing in this controller: keep the run for later
                    self.store.pause_run(run.id, f"cannot resume: {exc}")
                    continue
                self.store.finish_run(run.id, RunState.FAILED, f"cannot resume: {exc}", str(exc),
                                      {"state": RunState.FAILED.value,
                                       "reason": f"cannot resume: {exc}"})
                continue
            with self._starting:  # a ResumeRun may have started it meanwhile
                if run.id in self.active_ids():
                    continue
                log.info("resuming run", run_id=run.id, trials_done=run.trials_done)
                self._start(run.id, loop, owner=run.owner)
            resumed.append(run.id)
        return resumed

    def resume(self, run_id: str, by: Principal) -> RunRecord:
        """Continue a paused run (after an LLM outage, a missing key now provided, or an
        in-process controller that stopped), or an interrupted one: listed running, yet
        no loop of this controller runs it (its controller was killed). Raises
        NotFoundError (also for a run `by` does not see), PermissionDenied, StateConflict
        (finished, or running here already), FieldError, CapacityError."""
        run = access.changeable(self.store, run_id, by, "resume runs")
        if run.state.terminal:
            raise StateConflict(f"run {run_id}", f"run {run_id} has already finished "
                                f"({run.state.value}); only a paused or interrupted run "
                                "can be resumed")
        if run_id in self.active_ids():
            raise StateConflict(f"run {run_id}", f"run {run_id} is running in this "
                                "controller already")
        place = self._reserve(run.owner)
        try:
            settings = RunSettings.from_dict(run.settings)
            loop = self._loop(run_id, settings, self._task(settings, run_id, run.owner),
                              run.owner, run.created_at)
            with self._starting:
                if run_id in self.active_ids() or not (
                        self.store.unpause_run(run_id) or
                        self.store.get_run(run_id).state is RunState.RUNNING):
                    raise StateConflict(f"run {run_id}", f"run {run_id} is no longer "
                                        "paused or interrupted")
                self._start(run_id, loop, place)
        finally:
            self._release(place)
        log.info("resumed run", run_id=run_id, was=run.state.value)
        return self.store.get_run(run_id)

    def cancel(self, run_id: str, by: Principal, wait_seconds: float = 30.0) -> RunRecord:
        """Stop a run; the trial in flight is killed and not counted, and the run's stop
        reason says who cancelled it. Raises NotFoundError (also for a run `by` does not
        see), PermissionDenied, or StateConflict when the run has already finished."""
        run = access.changeable(self.store, run_id, by, "cancel runs")
        if run.state.terminal:
            raise StateConflict(f"run {run_id}",
                                f"run {run_id} has already finished ({run.state.value})")
        with self._lock:
            active = self._active.get(run_id)
        if active is None:  # running in the store but no loop here (e.g. resume failed)
            reason = access.cancelled_by(by)
            self.store.finish_run(run_id, RunState.CANCELLED, reason, reason,
                                  {"state": RunState.CANCELLED.value, "reason": reason})
        else:
            active.stop.request("cancelled", by=by.name)
            active.thread.join(wait_seconds)
        return self.store.get_run(run_id)

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def shutdown(self, wait_seconds: float = 30.0, pause_reason: str = "") -> None:
        """Stop every loop without finishing its run: a restart of a service resumes
        them. With `pause_reason` (an in-process controller of one command), they are
        paused instead, so they go on only when someone resumes them."""
        with self._lock:
            self._closing = True
            active = dict(self._active)
        for a in active.values():
            a.stop.request("shutdown")
        for a in active.values():
            a.thread.join(wait_seconds)
        if pause_reason:
            for run_id in active:
                if self.store.pause_run(run_id, pause_reason):
                    log.info("paused run on shutdown", run_id=run_id)
