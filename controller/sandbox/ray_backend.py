"""The Ray sandbox backend: the same `JobSpec -> JobResult` seam as SandboxExecutor, with
each job run as a Ray task on a node of a Ray cluster (ray_worker.py runs it there, in
the same hardened container, through that node's Docker engine).

Why a subclass: the controller keeps its own Docker engine for what stays on its host -
mechanism sessions (level2/runtime.py, interactive and called a few times per trial, so
the round trip through a cluster would cost more than it spreads) and reading data
volumes to ship - while `run()` goes to the cluster. Loops, API and store see an
executor like any other; the result carries the Ray node id it ran on.

A node that dies (or a Ray worker that crashes) mid-job is not the job's doing: the job
is run again on another node, up to `max_attempts` times, and the loss is recorded in
`lost`. A job that kills its own container returns a normal JobResult from its node and
is never re-run. Cancel becomes ray.cancel(): the task kills and removes its container.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from controller.quotas import Quotas
from controller.sandbox.backend_config import RayConfig as RayConfig
from controller.sandbox.backend_config import RayConfigError as RayConfigError
from controller.sandbox.executor import (
    ExecutorConfig,
    OutputCallback,
    SandboxExecutor,
    SandboxUnavailable,
)
from controller.sandbox.fair_share import FairShare
from controller.sandbox.spec import JobResult, JobSpec, SpecError, Status

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


class RayExecutor(SandboxExecutor):
    """Thread-safe; at most as many jobs in flight as the cluster has slots."""

    def __init__(self, config: ExecutorConfig, ray_config: RayConfig,
                 quotas: Quotas | None = None) -> None:
        ray_config.validate()
        # Jobs never take GPUs on the controller's host: Ray assigns them on the node.
        super().__init__(replace(config, gpu_slots=()), quotas)
        import ray

        self.ray_config = ray_config
        if not ray.is_initialized():
            try:
                ray.init(address=ray_config.address, namespace="bilevel",
                         log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SandboxUnavailable(f"cannot connect to the Ray cluster at "
                                         f"{ray_config.address}: {exc}") from exc
        slots = self.cluster_slots()
        if slots < 1:
            raise SandboxUnavailable(
                f"no live node of the Ray cluster at {ray_config.address} offers the "
                f"{ray_config.slot_resource!r} resource: start each prepared node with "
                f"`ray start ... --resources '{{\"{ray_config.slot_resource}\": N}}'`")
        self._check_gpus()
        self.config = replace(self.config, slots=slots)
        # The cluster's slots, shared between principals as the local ones are; each
        # is a GPU slot too when a slot takes GPUs.
        gpu = self.ray_config.gpus_per_slot > 0
        self.slots = FairShare(slots, slots if gpu else 0, self.quotas)
        self.cores = None  # jobs run on the cluster's nodes, placed by Ray's CPU accounting
        # What a node needs to make the same container: the exact image tag, the
        # namespace (ownership labels) and the runtime floor. No Docker URL, no GPU ids.
        self.node_config = ExecutorConfig(
            image=self.image, namespace=config.namespace, runtime=config.runtime,
            kill_grace_seconds=config.kill_grace_seconds,
            reap_interval_seconds=config.reap_interval_seconds)
        self.lost: list[LostJob] = []
        self._shipped: dict[str, Any] = {}
        self._ship_lock = threading.Lock()
        self._remote = ray.remote(_run_on_node_entry)
        self._board = self._cancel_board()

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

    def run(self, spec: JobSpec, *, on_output: OutputCallback | None = None,
            on_started: Callable[[], None] | None = None,
            cancel: threading.Event | None = None,
            slot_timeout: float | None = None) -> JobResult:
        spec.validate()
        image = spec.image or self.image
        if image not in self._allowed:
            raise SpecError("image", f"{image!r} is not an allowed sandbox image")
        if image != self.image:
            raise SpecError("image", "the Ray backend runs only the deployment's sandbox "
                            f"image {self.image}")
        if spec.gpu_ids:
            raise SpecError("gpu_ids", "a job never chooses its GPUs: Ray assigns them")
        if self.runtime == "runsc" and spec.runtime != "runsc":
            spec = replace(spec, runtime="runsc")
        self._check_fits(spec)
        grant = self.slots.acquire(self.principal, gpus=1 if self.slots.gpu_slots else 0,
                                   timeout=slot_timeout, cancel=cancel)
        if grant is None:
            return self._not_started(cancel)
        try:
            result = self._attempts(spec, on_started, cancel)
        finally:
            self.slots.release(grant)
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
                       data=tuple(self._ship(m.volume) for m in spec.data_mounts))

    def _ship(self, volume: str) -> Any:
        """The volume's contents in Ray's object store, read once per controller."""
        import ray

        from controller.sandbox.ray_worker import ShippedData, export_volume

        with self._ship_lock:
            if volume not in self._shipped:
                digest, blob = export_volume(self.client, self.image, volume,
                                             MAX_SHIPPED_DATA_BYTES)
                self._shipped[volume] = ShippedData(digest=digest, tar=ray.put(blob))
            return self._shipped[volume]

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


def parse_backend(backend: str, ray_address: str | None) -> RayConfig | None:
    """The Ray settings of `--backend`/`--ray-address`; None for the Docker backend."""
    if backend == "docker":
        if ray_address:
            raise RayConfigError("ray_address", "is only for --backend ray")
        return None
    if backend != "ray":
        raise RayConfigError("backend", f"must be docker or ray, got {backend!r}")
    if not ray_address:
        raise RayConfigError("ray_address", "--backend ray needs --ray-address HOST:PORT")
    config = RayConfig(address=ray_address)
    config.validate()
    if importlib.util.find_spec("ray") is None:
        raise RayConfigError("backend", "ray is not installed: pip install -e '.[ray]'")
    return config
