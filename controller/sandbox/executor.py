"""Run a JobSpec in a hardened Docker container and return a JobResult.

The executor owns classification: a timeout, an output flood and a cancel are kills it
made itself and records before killing, so the status never depends on guessing from
exit code 137. It never runs anything on the host: without a reachable engine it raises
SandboxUnavailable.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import docker
import docker.errors
import requests.exceptions
import structlog

from controller.principals import SHARED
from controller.quotas import Quotas
from controller.sandbox import archive, job_output
from controller.sandbox.backend_config import ExecutorConfig as ExecutorConfig
from controller.sandbox.backend_config import SandboxBusy as SandboxBusy
from controller.sandbox.backend_config import SandboxUnavailable as SandboxUnavailable
from controller.sandbox.cores import CoreGate, host_cores, shared_gate
from controller.sandbox.fair_share import FairShare
from controller.sandbox.gpus import GpuSlots
from controller.sandbox.hardening import container_kwargs, runner_job
from controller.sandbox.image import ImageBuildError, ImageRecipe, image_tag
from controller.sandbox.output import OutputCapture
from controller.sandbox.reaper import LABEL_PRINCIPAL, OWNER_EXECUTE, ownership_labels, reap
from controller.sandbox.spec import (
    RESULT_FILE,
    RETURNED_DIR,
    RUNNER_DIR,
    JobResult,
    JobSpec,
    SpecError,
    Status,
    Timings,
)

log = structlog.get_logger(__name__)

OutputCallback = Callable[[str, bytes], None]


@dataclass
class _Kill:
    """Why the executor killed a job; first reason wins."""

    reason: Status | None = None
    detail: str = ""

    def set(self, reason: Status, detail: str) -> bool:
        if self.reason is None:
            self.reason, self.detail = reason, detail
            return True
        return False


class SandboxExecutor:
    """Thread-safe: at most `config.slots` jobs run at once, the slots shared fairly
    between principals within their quotas (fair_share.py)."""

    def __init__(self, config: ExecutorConfig | None = None,
                 quotas: Quotas | None = None) -> None:
        self.config = config or ExecutorConfig()
        self.quotas = quotas or Quotas()
        self.client_kwargs: dict[str, Any] = (
            {"base_url": self.config.docker_url} if self.config.docker_url
            else docker.utils.kwargs_from_env())
        try:
            self.client = docker.DockerClient(**self.client_kwargs, timeout=60)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxUnavailable(
                f"cannot reach the Docker engine ({exc}); start it (see README#docker) — "
                "bilevel never runs jobs on the host"
            ) from exc
        info = self.client.info()
        self._runsc_problem = runsc_problem(info)
        self._runsc_nvproxy = any(str(a).startswith("--nvproxy") and not str(a).endswith(
            "=false") for a in ((info.get("Runtimes") or {}).get("runsc") or {}).get(
            "runtimeArgs") or [])
        # The least isolation any job gets here ("auto": gVisor where it is usable).
        self.runtime = self._runtime_floor()
        self.image = self.config.image or self._default_image()
        self._allowed = {self.image, *self.config.allowed_images}
        self._gpus = GpuSlots(self.config.gpu_slots)
        self.slots = FairShare(len(self._gpus) or self.config.slots, len(self._gpus),
                               self.quotas)
        # Time-budgeted jobs hold their cpus of this host's cores (trainer/run.py).
        self.cores: CoreGate | None = shared_gate(host_cores(self.client.info().get("NCPU")))
        self._stop = threading.Event()
        # io.bilevel.owner of the jobs, and the principal whose slots they take;
        # for_owner() makes a run's (or an Execute caller's) view of this executor.
        self.owner = OWNER_EXECUTE
        self.principal = SHARED.name
        self.claim_data: Callable[[str], None] | None = None
        self._reap_once()  # a failed start-up sweep must not stop the controller
        self._view = False  # for_owner's views share this executor's engine connections
        self._reaper = threading.Thread(target=self._reap_forever, name="sandbox-reaper",
                                        daemon=True)
        self._reaper.start()

    def _default_image(self) -> str:
        # Only look: starting a controller must never run debootstrap or a build.
        try:
            tag, _ = image_tag(self.client, ImageRecipe(), build_base=False)
            self.client.images.get(tag)
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
            self._reap_once()

    def _reap_once(self) -> None:
        try:
            reap(self.client, self.config.namespace)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("reaper sweep failed; the next one retries", error=str(exc))

    def allow_image(self, tag: str) -> None:
        """Let jobs run in `tag`: a task image this controller built on its own sandbox
        image (controller/sandbox/task_image.py). Only trusted code calls this; a request
        never names an image."""
        self._allowed.add(tag)

    def for_owner(self, owner: str, claim_data: Callable[[str], None] | None = None,
                  principal: str | None = None) -> SandboxExecutor:
        """This executor as `owner` (a run id) of `principal` uses it: the same engine,
        slots and images, its jobs and sessions labelled with the owner, its jobs
        taking the principal's share of the slots, and each data volume it mounts
        recorded by `claim_data(name)` before it is filled (sandbox/volumes.py)."""
        view = copy.copy(self)
        view.owner, view.claim_data = owner, claim_data
        view.principal = principal or self.principal
        view._view = True
        return view

    def close(self) -> None:
        """Stop the reaper and let go of the engine's connections (a view, for_owner's,
        shares them and leaves them open)."""
        if self._view:
            return
        self._stop.set()
        self._reaper.join(timeout=30)
        self.client.close()

    def run(self, spec: JobSpec, *, on_output: OutputCallback | None = None,
            on_started: Callable[[], None] | None = None,
            cancel: threading.Event | None = None,
            slot_timeout: float | None = None) -> JobResult:
        """Run one job to completion, once the fair-share rule gives it a slot. Raises
        SpecError for an invalid spec, SandboxBusy when no slot frees within
        `slot_timeout`; every other outcome is a JobResult (status killed when `cancel`
        is set while it waits)."""
        spec.validate()
        image = spec.image or self.image
        if image not in self._allowed:
            raise SpecError("image", f"{image!r} is not an allowed sandbox image")
        self._gpus.check_request(spec.gpu_ids)
        if self.runtime == "runsc" and spec.runtime != "runsc":
            spec = replace(spec, runtime="runsc")
        if spec.runtime == "runsc":
            self._require_runsc()
        grant = self.slots.acquire(self.principal, gpus=1 if len(self._gpus) else 0,
                                   timeout=slot_timeout, cancel=cancel)
        if grant is None:
            return self._not_started(cancel)
        gpus: tuple[str, ...] = ()
        try:
            gpus = self._gpus.take()
            if gpus:
                spec = replace(spec, gpu_ids=gpus)
            return _Job(self, spec, image, on_output, on_started, cancel).run()
        finally:
            self._gpus.give(gpus)
            self.slots.release(grant)

    def _not_started(self, cancel: threading.Event | None) -> JobResult:
        """A job that got no slot: cancelled while it waited, or SandboxBusy."""
        if cancel is not None and cancel.is_set():
            return JobResult(status=Status.KILLED, exit_code=None,
                             detail="cancelled while waiting for a sandbox slot")
        raise SandboxBusy("all sandbox slots are busy")


class _Job:
    """One job's lifecycle: volume, container, stream, wait, collect, teardown."""

    def __init__(self, executor: SandboxExecutor, spec: JobSpec, image: str,
                 on_output: OutputCallback | None, on_started: Callable[[], None] | None,
                 cancel: threading.Event | None) -> None:
        self.ex = executor
        self.client = executor.client
        self.spec = spec
        self.image = image
        self.on_output = on_output
        self.on_started = on_started
        self.cancel = cancel
        self.name = f"bilevel-job-{uuid.uuid4().hex[:12]}"
        self.kill = _Kill()
        self.stdout = OutputCapture()
        self.stderr = OutputCapture()
        self.container: Any = None
        self.volume: Any = None
        self._api: Any = None
        self._output: Any = ()
        self.log = log.bind(job=self.name)
        self.report = job_output.RunnerResult()  # set by _runner_result

    def run(self) -> JobResult:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        try:
            self._create()
            timings["create_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            self._attach()  # before start: a job that ends at once still has its output
            self.container.start()
            timings["start_s"] = time.monotonic() - t1
            if self.on_started:
                self.on_started()
            t2 = time.monotonic()
            exit_code = self._wait()
            timings["run_s"] = time.monotonic() - t2
            result = self._collect(exit_code)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            self.log.error("sandbox failure", error=str(exc))
            result = JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                               detail=f"sandbox failure: {exc}")
        finally:
            t3 = time.monotonic()
            self._teardown()
            timings["teardown_s"] = time.monotonic() - t3
        return replace(result, timings=Timings(**timings))

    def _teardown(self) -> None:
        if self._api is not None:
            self._api.close()  # idempotent; covers a start that failed after attach
        for obj in (self.container, self.volume):
            if obj is not None:
                _teardown_quietly(obj)

    def _create(self) -> None:
        limits = self.spec.limits
        deadline = time.time() + limits.wall_seconds + self.ex.config.kill_grace_seconds + 60
        labels = {**self.spec.labels, LABEL_PRINCIPAL: self.ex.principal,
                  **ownership_labels(self.ex.config.namespace, deadline, self.ex.owner)}
        self.volume = self.client.volumes.create(name=self.name, labels=labels)
        self.container = self.client.containers.create(
            **container_kwargs(self.spec, image=self.image, name=self.name,
                               volume=self.volume.name, labels=labels))
        job = runner_job(self.spec)
        if not self.container.put_archive(RUNNER_DIR, archive.pack_job(self.spec.files, job)):
            raise docker.errors.DockerException("could not place the job's files")

    def _attach(self) -> None:
        """Open the output stream of the created container. Attached after start, a job
        that exits first can leave the stream empty (seen: a print lost in CI)."""
        # A hijacked attach connection must never go back to the shared pool: give the
        # stream a client of its own and close it when the job ends.
        self._api = docker.APIClient(**self.ex.client_kwargs, timeout=None)
        self._output = self._api.attach(self.container.id, stdout=True, stderr=True,
                                        stream=True, logs=True, demux=True)

    def _stream(self) -> None:
        """Copy output into the captures; kill the job when it floods."""
        cap = self.spec.limits.output_bytes
        try:
            flooded = False
            for out, err in self._output:
                if flooded:
                    continue  # keep draining: a blocked stream keeps the container alive
                for name, chunk, capture in (("stdout", out, self.stdout),
                                             ("stderr", err, self.stderr)):
                    if not chunk:
                        continue
                    capture.feed(chunk)
                    if self.on_output:
                        self.on_output(name, chunk)
                if self.stdout.total + self.stderr.total > cap:
                    flooded = True
                    # Kill from another thread: this one must keep reading, or the
                    # engine cannot finish the kill while the stream is blocked.
                    threading.Thread(target=self._kill, daemon=True, args=(
                        Status.OUTPUT_LIMIT, f"output exceeded {cap} bytes")).start()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return  # the container went away; _wait reports what happened
        finally:
            self._api.close()

    def _kill(self, reason: Status, detail: str) -> None:
        if self.kill.set(reason, detail):
            self.log.info("killing job", reason=reason.value, detail=detail)
        with contextlib.suppress(docker.errors.APIError):  # already stopped
            self.container.kill()

    def _wait(self) -> int | None:
        streamer = threading.Thread(target=self._stream, name=f"{self.name}-out", daemon=True)
        streamer.start()
        deadline = time.monotonic() + self.spec.limits.wall_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill(Status.TIMEOUT,
                           f"exceeded wall time of {self.spec.limits.wall_seconds:g} s")
                break
            if self.cancel is not None and self.cancel.is_set():
                self._kill(Status.KILLED, "cancelled")
                break
            try:
                self.container.wait(timeout=min(remaining, 0.5))
                break
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                continue  # wait's read timed out; check the deadline and cancel again
        state = self.container.wait(timeout=30 + self.ex.config.kill_grace_seconds)
        streamer.join(timeout=5)
        code = state.get("StatusCode")
        return int(code) if code is not None else None

    def _collect(self, exit_code: int | None) -> JobResult:
        self.container.reload()
        oom_flag = bool(self.container.attrs["State"].get("OOMKilled"))
        runner = self._runner_result()
        limits = self.spec.limits
        files = archive.Unpacked()
        if self.kill.reason is None and runner:  # the runner copied them, job dead
            chunks, _ = self.container.get_archive(RETURNED_DIR)
            files = archive.unpack_returned(chunks, root="out",
                                            max_bytes=limits.returned_file_bytes)
        status, detail = self._classify(exit_code, oom_flag, runner, files)
        report = self.report
        notes = [n for n in (report.problem, report.metrics_error and
                             f"metrics dropped: {report.metrics_error}") if n]
        detail = "; ".join([detail, *notes] if detail else notes)
        return JobResult(
            status=status,
            exit_code=report.exit_code if report.exit_code is not None else exit_code,
            stdout_head=self.stdout.head(), stdout_tail=self.stdout.tail(),
            stderr_head=self.stderr.head(), stderr_tail=self.stderr.tail(),
            output_bytes=self.stdout.total + self.stderr.total,
            exception=report.exception,
            metrics=report.metrics,
            files=files.files,
            detail=detail,
            cpu_seconds=_cpu_seconds(runner),
        )

    def _runner_result(self) -> dict[str, Any]:
        """The runner's report, every field checked (job_output.py); {} if unusable."""
        try:
            chunks, _ = self.container.get_archive(RESULT_FILE)
        except docker.errors.NotFound:
            return {}
        self.report = job_output.runner_result(
            archive.read_single(chunks, max_bytes=job_output.RESULT_BYTES))
        return self.report.fields()

    def _classify(self, exit_code: int | None, oom_flag: bool, runner: dict[str, Any],
                  files: archive.Unpacked) -> tuple[Status, str]:
        limits = self.spec.limits
        if self.kill.reason is not None:
            return self.kill.reason, self.kill.detail
        if oom_flag:
            return Status.OOM, f"killed for exceeding memory of {limits.memory_bytes} bytes"
        if not runner:
            # We did not kill it, so the runner itself died: the job cannot signal it
            # (another uid), so this is the sandbox failing, not the job's doing.
            if exit_code == 137 and _looks_like_oom(self):
                return Status.OOM, f"killed for exceeding memory of {limits.memory_bytes} bytes"
            return Status.SANDBOX_ERROR, \
                f"the sandbox runner ended (exit {exit_code}) without a result"
        raw = str(runner.get("status", ""))
        detail = str(runner.get("detail", ""))
        if runner.get("signal") == 9 and _looks_like_oom(self):
            return Status.OOM, f"killed for exceeding memory of {limits.memory_bytes} bytes"
        if files.over_budget:
            return Status.OUTPUT_LIMIT, (f"returned files exceed {limits.returned_file_bytes}"
                                         " bytes")
        if files.refused:
            detail = (detail + "; " if detail else "") + "refused returned files: " + \
                ", ".join(files.refused)
        mapping = {"ok": Status.OK, "error": Status.ERROR, "output_limit": Status.OUTPUT_LIMIT}
        return mapping.get(raw, Status.ERROR), detail


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


def _cpu_seconds(runner: dict[str, Any]) -> float | None:
    """The runner's CPU measurement, if it is a finite non-negative number."""
    raw = runner.get("cpu_seconds")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if math.isfinite(value) and value >= 0 else None


def _looks_like_oom(job: _Job) -> bool:
    """gVisor does not always set OOMKilled; a SIGKILL we did not send, with the
    kernel's OOM message in the output, is the memory limit."""
    text = job.stderr.tail() + job.stdout.tail()
    return "Out of memory" in text or "MemoryError" in text


def _teardown_quietly(obj: Any) -> None:
    try:
        obj.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("teardown failed; the reaper will retry", error=str(exc))
