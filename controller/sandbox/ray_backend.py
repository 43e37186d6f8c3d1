"""The Ray sandbox backend: each job runs as a Ray task on a node of a Ray cluster
(ray_worker.py runs it there, in the same hardened container, through that node's
Docker engine). It implements the SandboxBackend protocol (backend.py).

What stays on the controller's host goes through a DockerExecutor of the controller's
own engine (`local`): mechanism sessions (interactive and called a few times per trial,
so the round trip through a cluster would cost more than it spreads), the data volumes
that jobs mount (read there and shipped to the nodes), task images and the reaping of
the namespace's orphans. The result of a job carries the Ray node id it ran on.

A node that dies (or a Ray worker that crashes) mid-job is not the job's doing: the job
is run again on another node, up to `max_attempts` times, and the loss is recorded in
`lost`. A job that kills its own container returns a normal JobResult from its node and
is never re-run. Cancel becomes ray.cancel(): the task kills and removes its container.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import structlog

from controller.principals import Principal
from controller.quotas import Quotas
from controller.sandbox.backend import (
    ClaimIndex,
    MechanismSession,
    OutputCallback,
    RunClaims,
    Sweep,
)
from controller.sandbox.backend_config import ExecutorConfig, RayConfig, SandboxUnavailable
from controller.sandbox.cores import CoreGate
from controller.sandbox.docker_engine import engine_calls
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.fair_share import FairShare
from controller.sandbox.slotted import SlottedBackend
from controller.sandbox.spec import JobResult, JobSpec, SpecError, Status
from controller.sandbox.task_image import WheelSource

log = structlog.get_logger(__name__)

MAX_SHIPPED_DATA_BYTES = 2 << 30
_HEAD_CHARS = 64 << 10  # an OutputCapture head/tail is at most this (checked, never trusted)


@dataclass(frozen=True)
class LostJob:
    """A job attempt the cluster lost (node died, worker crashed) and ran again."""

    attempt: int
    error: str
    rerun_node: str = ""


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    return (rex.NodeDiedError, rex.WorkerCrashedError, rex.LocalRayletDiedError,
            rex.ObjectLostError, rex.OwnerDiedError, rex.RaySystemError,
            rex.OutOfMemoryError, rex.TaskUnschedulableError)


class RayExecutor(SlottedBackend):
    """Thread-safe; at most as many jobs in flight as the cluster has slots."""

    def __init__(self, config: ExecutorConfig, ray_config: RayConfig,
                 quotas: Quotas | None = None) -> None:
        ray_config.validate()
        quotas = quotas or Quotas()
        self.ray_config = ray_config
        # Jobs never take GPUs on the controller's host: Ray assigns them on the node.
        self.local = DockerExecutor(replace(config, gpu_slots=()), quotas)
        try:
            slots = self._connect()
        except BaseException:
            self.local.close()
            raise
        # The cluster's slots, shared between principals as the local ones are; each
        # is a GPU slot too when a slot takes GPUs.
        gpu = ray_config.gpus_per_slot > 0
        super().__init__(replace(config, gpu_slots=(), slots=slots), quotas,
                         FairShare(slots, slots if gpu else 0, quotas))
        self.image = self.local.image
        self.runtime = self.local.runtime
        # Jobs run on the cluster's nodes, placed by Ray's CPU accounting: no host gate.
        self.cores: CoreGate | None = None
        # What a node needs to make the same container: the exact image tag, the
        # namespace (ownership labels), the runtime floor and the warm pool's bounds (each
        # node's worker keeps its own pool: ray_worker.py). No Docker URL, no GPU ids.
        self.node_config = ExecutorConfig(
            image=self.image, namespace=config.namespace, runtime=config.runtime,
            kill_grace_seconds=config.kill_grace_seconds,
            reap_interval_seconds=config.reap_interval_seconds, pool=config.pool)
        self.lost: list[LostJob] = []
        self._shipped: dict[str, Any] = {}
        self._ship_lock = threading.Lock()
        import ray

        self._remote = ray.remote(_run_on_node_entry)
        self._board = self._cancel_board()

    def _connect(self) -> int:
        """Attach to the cluster; its slot count (SandboxUnavailable when it has none)."""
        import ray

        address = self.ray_config.address
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace="bilevel",
                         log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SandboxUnavailable(f"cannot connect to the Ray cluster at "
                                         f"{address}: {exc}") from exc
        slots = self.cluster_slots()
        resource = self.ray_config.slot_resource
        if slots < 1:
            raise SandboxUnavailable(
                f"no live node of the Ray cluster at {address} offers the {resource!r} "
                f"resource: start each prepared node with `ray start ... --resources "
                f"'{{\"{resource}\": N}}'`")
        self._check_gpus()
        return slots

    def for_owner(self, owner: str, *, principal: str | None = None,
                  claims: RunClaims | None = None) -> Self:
        view = super().for_owner(owner, principal=principal, claims=claims)
        view.local = self.local.for_owner(owner, principal=principal, claims=claims)
        return view

    def close(self) -> None:
        """Let go of the controller's engine (a view leaves it open)."""
        if not self._view:
            self.local.close()

    # What stays on the controller's host: its own engine.

    def open_session(self, spec: JobSpec) -> MechanismSession:
        return self.local.open_session(spec)

    def ensure_data(self, stem: str, source: Path) -> str:
        return self.local.ensure_data(stem, source)

    def publish_data(self, source: Path, principal: str) -> str:
        return self.local.publish_data(source, principal)

    def resolve_data(self, spec: JobSpec, principal: Principal) -> JobSpec:
        return self.local.resolve_data(spec, principal)

    def ensure_task_image(self, requirements: Sequence[str],
                          wheels: WheelSource | None = None) -> str:
        """Built on the controller's engine; the nodes run only the deployment's sandbox
        image, so a job in a task image is refused (run_job)."""
        return self.local.ensure_task_image(requirements, wheels)

    def reap(self) -> int:
        """The controller's engine; each node's executor reaps what it made there."""
        return self.local.reap()

    def release_holds(self, index: ClaimIndex, sweep: Sweep) -> None:
        self.local.release_holds(index, sweep)

    def remove_data(self, name: str, index: ClaimIndex, sweep: Sweep) -> None:
        self.local.remove_data(name, index, sweep)

    def remove_task_image(self, tag: str, index: ClaimIndex, sweep: Sweep) -> None:
        self.local.remove_task_image(tag, index, sweep)

    def sweep(self, index: ClaimIndex) -> Sweep:
        return self.local.sweep(index)

    # Jobs: on the cluster.

    def _cancel_board(self) -> Any:
        """The CancelBoard actor, pinned to this controller's own Ray node."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from controller.sandbox.ray_worker import CancelBoard

        here = ray.get_runtime_context().get_node_id()
        return ray.remote(CancelBoard).options(
            num_cpus=0, max_concurrency=64,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()

    def nodes(self) -> list[dict[str, Any]]:
        """Live Ray nodes that offer the slot resource."""
        import ray

        return [n for n in ray.nodes()  # type: ignore[no-untyped-call]
                if n.get("Alive")
                and n.get("Resources", {}).get(self.ray_config.slot_resource, 0) >= 1]

    def cluster_slots(self) -> int:
        return int(sum(n["Resources"][self.ray_config.slot_resource] for n in self.nodes()))

    def _check_gpus(self) -> None:
        want = self.ray_config.gpus_per_slot
        if want <= 0:
            return
        if not any(n["Resources"].get("GPU", 0) >= want for n in self.nodes()):
            raise SandboxUnavailable(
                f"each slot asks for {want:g} GPU(s), but every node of the Ray cluster "
                f"with the {self.ray_config.slot_resource!r} resource is CPU-only: GPU "
                "jobs are refused; add GPU nodes or set gpus_per_slot to 0")

    def _check_fits(self, spec: JobSpec) -> None:
        """A job no live slot node could take would wait in Ray's queue forever."""
        nodes = [n["Resources"] for n in self.nodes()]
        if not any(r.get("memory", 0) >= spec.limits.memory_bytes for r in nodes):
            raise SpecError("limits.memory_bytes", f"{spec.limits.memory_bytes} bytes is more "
                            "memory than any node of the Ray cluster offers")

    def _admit(self, spec: JobSpec, image: str) -> None:
        if image != self.image:
            raise SpecError("image", "the Ray backend runs only the deployment's sandbox "
                            f"image {self.image}")
        if spec.gpu_ids:
            raise SpecError("gpu_ids", "a job never chooses its GPUs: Ray assigns them")
        self._check_fits(spec)

    def _run_held(self, spec: JobSpec, image: str, on_output: OutputCallback | None,
                  on_started: Callable[[], None] | None,
                  cancel: threading.Event | None) -> JobResult:
        result = self._attempts(spec, on_started, cancel)
        if on_output is not None:  # no live stream through Ray: the capture, at the end
            for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
                if text:
                    on_output(name, text.encode())
        return result

    def _job(self, spec: JobSpec) -> Any:
        from controller.sandbox.ray_worker import NodeJob

        return NodeJob(spec=spec, config=self.node_config,
                       gpus_per_slot=self.ray_config.gpus_per_slot,
                       job_id=uuid.uuid4().hex, board=self._board, principal=self.principal,
                       data=tuple(self._ship(m.source) for m in spec.data_mounts))

    def _ship(self, source: str) -> Any:
        """The data's contents in Ray's object store, read once per controller."""
        import ray

        from controller.sandbox.ray_worker import ShippedData, export_volume

        with self._ship_lock, engine_calls():
            if source not in self._shipped:
                digest, blob = export_volume(self.local.engine.client, self.image, source,
                                             MAX_SHIPPED_DATA_BYTES)
                self._shipped[source] = ShippedData(digest=digest, tar=ray.put(blob))
            return self._shipped[source]

    def _attempts(self, spec: JobSpec, on_started: Callable[[], None] | None,
                  cancel: threading.Event | None) -> JobResult:
        import ray.exceptions as rex

        job = self._job(spec)
        options = {"num_cpus": self.ray_config.cpus_per_slot,
                   "num_gpus": self.ray_config.gpus_per_slot,
                   "memory": spec.limits.memory_bytes,
                   "resources": {self.ray_config.slot_resource: 1},
                   "max_retries": 0, "retry_exceptions": False}
        lost: list[LostJob] = []
        for attempt in range(1, self.ray_config.max_attempts + 1):
            ref = self._remote.options(**options).remote(job)
            if on_started is not None and attempt == 1:
                on_started()
            try:
                out = self._wait(ref, job, cancel)
            except rex.TaskCancelledError:
                out = None
            except _lost_errors() as exc:
                lost.append(LostJob(attempt, f"{type(exc).__name__}: {str(exc)[:500]}"))
                log.warning("a Ray node or worker was lost mid-job; running it again",
                            attempt=attempt, error=str(exc)[:300])
                continue
            except rex.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, SandboxUnavailable):
                    raise SandboxUnavailable(str(cause)) from None
                return JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                                 detail=f"the Ray task failed: {str(exc)[:1000]}")
            if out is None:
                return JobResult(status=Status.KILLED, exit_code=None, detail="cancelled")
            result = _checked(out.result, spec)
            if lost:
                self.lost.extend(replace(x, rerun_node=out.node_id) for x in lost)
                note = f"re-run on node {out.node_id} after {len(lost)} lost attempt(s)"
                result = replace(result, detail="; ".join(filter(None, (result.detail, note))))
            return replace(result, node=out.node_id)
        self.lost.extend(lost)
        return JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                         detail=f"the Ray cluster lost the job {len(lost)} times: "
                                f"{lost[-1].error if lost else ''}")

    def _wait(self, ref: Any, job: Any, cancel: threading.Event | None) -> Any:
        """The task's NodeResult (status killed after a cancel: the task kills and
        removes its container, then returns); None when a cancelled task did not end."""
        import ray

        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                return ray.get(ref)
            if cancel is not None and cancel.is_set():
                break
        ray.get(self._board.cancel.remote(job.job_id))
        try:
            ready, _ = ray.wait([ref], timeout=60 + self.config.kill_grace_seconds)
            if ready:
                return ray.get(ref)
            ray.cancel(ref, force=True)  # a task that did not answer: end its worker
            return None
        finally:
            self._board.forget.remote(job.job_id)


def _checked(result: Any, spec: JobSpec) -> JobResult:
    """The node's result, refused unless it is a JobResult within the job's caps (the
    node is trusted code, but a result that breaks the caps must not reach the store)."""
    if not isinstance(result, JobResult) or not isinstance(result.status, Status):
        return JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                         detail="the Ray node returned something that is not a JobResult")
    files = sum(len(v) for v in result.files.values())
    texts = (result.stdout_head, result.stdout_tail, result.stderr_head, result.stderr_tail)
    if files > spec.limits.returned_file_bytes or any(len(t) > _HEAD_CHARS for t in texts):
        return JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                         detail="the Ray node's result exceeds the job's size caps")
    return result


def _run_on_node_entry(job: Any) -> Any:
    """The Ray task (imported by reference on the node: bilevel must be installed there)."""
    from controller.sandbox.ray_worker import run_on_node

    return run_on_node(job)
