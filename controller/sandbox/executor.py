"""The Docker backend: sandbox jobs and sessions in hardened containers on one Docker
engine (the SandboxBackend protocol, backend.py).

It never runs anything on the host: without a reachable engine it raises
SandboxUnavailable. Jobs run as docker_job.py's DockerJob, sessions as session.py's
DockerSession; data volumes (volumes.py) and task images (task_image.py) are made here
and removed by docker_objects.py. A reaper thread removes the namespace's orphans.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
import structlog

from controller.principals import Principal
from controller.quotas import Quotas
from controller.sandbox import volumes
from controller.sandbox.backend import ClaimIndex, OutputCallback, Sweep
from controller.sandbox.backend_config import ExecutorConfig, PoolConfig, SandboxUnavailable
from controller.sandbox.cores import CoreGate, host_cores, shared_gate
from controller.sandbox.docker_engine import DockerEngine, engine_calls
from controller.sandbox.docker_job import DockerJob, class_key, make_warm
from controller.sandbox.docker_objects import DockerObjects
from controller.sandbox.fair_share import FairShare
from controller.sandbox.gpus import GpuSlots
from controller.sandbox.image import ImageBuildError, ImageRecipe, image_tag
from controller.sandbox.reaper import LABEL_PRINCIPAL, ownership_labels, reap
from controller.sandbox.session import DockerSession
from controller.sandbox.slotted import SlottedBackend
from controller.sandbox.spec import JobResult, JobSpec, SpecError
from controller.sandbox.task_image import WheelSource, ensure_task_image
from controller.sandbox.task_image_tags import hold_task_image, namespace_tag
from controller.sandbox.warm_pool import Warm, WarmPool

log = structlog.get_logger(__name__)


class DockerExecutor(SlottedBackend):
    """Thread-safe: at most `config.slots` jobs run at once (one per GPU slot with
    GPUs), the slots shared fairly between principals within their quotas."""

    def __init__(self, config: ExecutorConfig | None = None,
                 quotas: Quotas | None = None) -> None:
        config = config or ExecutorConfig()
        quotas = quotas or Quotas()
        self.engine = DockerEngine.connect(config.docker_url)
        info = self.engine.client.info()
        self._runsc_problem = runsc_problem(info)
        self._runsc_nvproxy = any(str(a).startswith("--nvproxy") and not str(a).endswith(
            "=false") for a in ((info.get("Runtimes") or {}).get("runsc") or {}).get(
            "runtimeArgs") or [])
        self._gpus = GpuSlots(config.gpu_slots)
        super().__init__(config, quotas, FairShare(len(self._gpus) or config.slots,
                                                   len(self._gpus), quotas))
        # The least isolation any job gets here ("auto": gVisor where it is usable).
        self.runtime = self._runtime_floor()
        self.image = config.image or self._default_image()
        # Time-budgeted jobs hold their cpus of this host's cores (cores.py).
        self.cores: CoreGate | None = shared_gate(host_cores(info.get("NCPU")))
        self.objects = DockerObjects(self.engine, config.namespace)
        self.pool = WarmPool(config.pool or PoolConfig(size=0))
        self._stop = threading.Event()
        self._reap_quietly()  # a failed start-up sweep must not stop the controller
        self._reaper = threading.Thread(target=self._reap_forever, name="sandbox-reaper",
                                        daemon=True)
        self._reaper.start()

    def _default_image(self) -> str:
        # Only look: starting a controller must never run debootstrap or a build.
        try:
            tag, _ = image_tag(self.engine.client, ImageRecipe(), build_base=False)
            self.engine.client.images.get(tag)
        except (ImageBuildError, docker.errors.ImageNotFound) as exc:
            raise SandboxUnavailable(
                f"the sandbox image for this checkout is not built ({exc}): run "
                "`bilevel image build`") from exc
        return tag

    def _runtime_floor(self) -> str:
        wanted = self.config.runtime
        if wanted == "runsc":
            self._require_runsc()
            return "runsc"
        problem = self._runsc_problem
        if wanted == "auto" and not problem and self.config.gpu_slots \
                and not self._runsc_nvproxy:
            problem = "GPU jobs under gVisor need runsc registered with --nvproxy=true"
        if wanted == "auto" and not problem:
            return "runsc"
        log.warning("sandbox jobs run under runc unless they ask for runsc: runc shares the "
                    "host's kernel, so a kernel bug or a capability the container keeps is "
                    "a way out (see README#the-sandbox)",
                    why=problem or "sandbox.runtime = \"runc\" was chosen")
        return "runc"

    def _require_runsc(self) -> None:
        """A job asked for gVisor: runsc must be registered and enforce our seccomp
        profile; a job never runs with less isolation than it asked for."""
        if self._runsc_problem:
            raise SandboxUnavailable(self._runsc_problem)

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.config.reap_interval_seconds):
            self._reap_quietly()

    def _reap_quietly(self) -> None:
        try:
            self.reap()
        except SandboxUnavailable as exc:
            log.warning("reaper sweep failed; the next one retries", error=str(exc))

    def reap(self) -> int:
        with engine_calls():
            report = reap(self.engine.client, self.config.namespace)
        return report.containers + report.volumes

    def close(self) -> None:
        """Stop the reaper and let go of the engine's connections (a view, for_owner's,
        shares them and leaves them open)."""
        if self._view:
            return
        self._stop.set()
        self._reaper.join(timeout=30)
        self.pool.close()
        self.engine.close()

    def labels(self, spec: JobSpec, seconds: float) -> dict[str, str]:
        """A job's or session's labels: its own, its principal, and the ownership that
        lets the reaper remove it `seconds` from now at the latest."""
        return {**spec.labels, LABEL_PRINCIPAL: self.principal,
                **ownership_labels(self.config.namespace, time.time() + seconds, self.owner)}

    def _admit(self, spec: JobSpec, image: str) -> None:
        self._gpus.check_request(spec.gpu_ids)
        if spec.runtime == "runsc":
            self._require_runsc()

    def _run_held(self, spec: JobSpec, image: str, on_output: OutputCallback | None,
                  on_started: Callable[[], None] | None,
                  cancel: threading.Event | None) -> JobResult:
        gpus: tuple[str, ...] = ()
        try:
            gpus = self._gpus.take()
            if gpus:
                spec = replace(spec, gpu_ids=gpus)
            grace = self.config.kill_grace_seconds
            labels = self.labels(spec, spec.limits.wall_seconds + grace + 60)
            key = class_key(spec, image, labels)
            warm = self.pool.claim(key)
            # The next job of this class finds one waiting (made while this one runs).
            self.pool.refill(key, lambda: self._make_warm(spec, image, key))
            return DockerJob(self.engine, spec, image, labels, grace, on_output, on_started,
                             cancel, warm).run()
        finally:
            self._gpus.give(gpus)

    def _make_warm(self, spec: JobSpec, image: str, key: str) -> Warm:
        """One pooled container of the class: its labels' deadline covers the time it may
        wait and the job's own (so the reaper never removes it under a job)."""
        idle = self.pool.config.idle_seconds
        grace = self.config.kill_grace_seconds
        labels = self.labels(spec, idle + spec.limits.wall_seconds + grace + 60)
        return make_warm(self.engine, spec, image, labels, key, idle)

    def prewarm(self, spec: JobSpec) -> bool:
        """Make one pooled container for jobs like `spec` and wait until it is waiting
        (e.g. before a burst of Execute calls); False when the pool is off or full.
        Not for GPU jobs: their class depends on the slot a job gets."""
        spec, image = self._checked(spec)
        grace = self.config.kill_grace_seconds
        key = class_key(spec, image, self.labels(spec, spec.limits.wall_seconds + grace + 60))
        with engine_calls():
            return self.pool.fill_now(key, lambda: self._make_warm(spec, image, key))

    def open_session(self, spec: JobSpec) -> DockerSession:
        spec.validate()
        image = spec.image or self.image
        if not self.allowed(image):
            raise SpecError("image", f"{image!r} is not an allowed sandbox image")
        session = DockerSession(self.engine, spec, image,
                                self.labels(spec, spec.limits.wall_seconds))
        session.start()
        return session

    # Data: volumes.py holds the rules.

    def ensure_data(self, stem: str, source: Path) -> str:
        with engine_calls():
            return volumes.data_volume(self.engine.client, self.config.namespace, stem,
                                       source, self.image, self._claim_data)

    def _claim_data(self, name: str) -> None:
        """Claim volume `name` for this view's run in the store, then hold it on the
        engine (volumes.py), before it is filled or mounted."""
        if self.claims is None:
            return
        self.claims.claim_data(name)
        volumes.hold_data_volume(self.engine.client, name, self.image,
                                 self.config.namespace, self.owner, self.claims.store)

    def publish_data(self, source: Path, principal: str) -> str:
        with engine_calls():
            return volumes.publish_data_volume(self.engine.client, self.config.namespace,
                                               source, self.image, principal)

    def resolve_data(self, spec: JobSpec, principal: Principal) -> JobSpec:
        if not spec.data_mounts:
            return spec
        with engine_calls():
            return volumes.resolve_data_mounts(self.engine.client, self.config.namespace,
                                               spec, principal)

    def ensure_task_image(self, requirements: Sequence[str],
                          wheels: WheelSource | None = None) -> str:
        with engine_calls():
            tag = ensure_task_image(self.engine.client, self.image, requirements, wheels)
            if tag != self.image and self.claims is not None:
                # This controller's own tag, claimed for the run before it is tagged; a
                # sweep re-checks the claims under the same lock.
                ns_tag = namespace_tag(tag, self.config.namespace, self.claims.store)
                with volumes.named_lock(ns_tag):
                    self.claims.claim_image(ns_tag)
                    hold_task_image(self.engine.client, tag, self.config.namespace,
                                    self.claims.store)
                tag = ns_tag
        self.allow_image(tag)
        return tag

    # RunObjects: docker_objects.py.

    def release_holds(self, index: ClaimIndex, sweep: Sweep) -> None:
        self.objects.release_holds(index, sweep)

    def remove_data(self, name: str, index: ClaimIndex, sweep: Sweep) -> None:
        self.pool.drop(lambda c: any(m.get("Source") == name for m in c["mounts"]))
        self.objects.remove_data(name, index, sweep)

    def remove_task_image(self, tag: str, index: ClaimIndex, sweep: Sweep) -> None:
        self.pool.drop(lambda c: c["image"] == tag)
        self.objects.remove_task_image(tag, index, sweep)

    def sweep(self, index: ClaimIndex) -> Sweep:
        # Waiting containers hold their data volumes and task images in use.
        self.pool.drop(lambda c: bool(c["mounts"]) or c["image"] != self.image)
        return self.objects.sweep(index)


def runsc_problem(info: dict[str, Any]) -> str:
    """Why jobs cannot run under gVisor on this engine ("" when they can): runsc must be
    registered, and with --oci-seccomp, or gVisor ignores the container's seccomp
    profile (controller/sandbox/seccomp.py)."""
    runtimes = info.get("Runtimes") or {}
    runsc = runtimes.get("runsc")
    fix = ('register it in /etc/docker/daemon.json as {"runtimes": {"runsc": {"path": '
           '"/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}}} and '
           "reload dockerd (see README#gvisor), or set sandbox.runtime = \"runc\" to "
           "accept weaker isolation")
    if not isinstance(runsc, dict):
        return f"jobs are to run under gVisor, but runsc is not registered with the Docker " \
               f"daemon: {fix}"
    args = runsc.get("runtimeArgs") or []
    if "--oci-seccomp" not in args and "--oci-seccomp=true" not in args:
        return f"runsc is registered without --oci-seccomp, so gVisor would ignore the " \
               f"sandbox's seccomp profile: {fix}"
    return ""
