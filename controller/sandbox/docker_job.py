"""One sandbox job on a Docker engine: its volume and container, the output stream, the
wait, the collection of the runner's report and returned files, and the teardown.

The job owns classification: a timeout, an output flood and a cancel are kills it made
itself and records before killing, so the status never depends on guessing from exit
code 137.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import docker.errors
import requests.exceptions
import structlog

from controller.sandbox import archive, job_output
from controller.sandbox.backend import OutputCallback
from controller.sandbox.docker_engine import ENGINE_ERRORS, DockerEngine
from controller.sandbox.hardening import container_kwargs, runner_job
from controller.sandbox.output import OutputCapture
from controller.sandbox.reaper import LABEL_DEADLINE
from controller.sandbox.spec import (
    RESULT_FILE,
    RETURNED_DIR,
    RUNNER_DIR,
    JobResult,
    JobSpec,
    Status,
    Timings,
)
from controller.sandbox.warm_pool import LABEL_POOL, POOLED_FLAG, RUNNER_IDLE_SLACK, Warm, destroy

log = structlog.get_logger(__name__)


@dataclass
class _Kill:
    """Why the job was killed; first reason wins."""

    reason: Status | None = None
    detail: str = ""

    def set(self, reason: Status, detail: str) -> bool:
        if self.reason is None:
            self.reason, self.detail = reason, detail
            return True
        return False


class DockerJob:
    """One job's lifecycle: volume, container, stream, wait, collect, teardown. The
    container and its volume carry `labels` (ownership and deadline, reaper.py)."""

    def __init__(self, engine: DockerEngine, spec: JobSpec, image: str,
                 labels: dict[str, str], kill_grace_seconds: float,
                 on_output: OutputCallback | None, on_started: Callable[[], None] | None,
                 cancel: threading.Event | None, warm: Warm | None = None) -> None:
        self.engine = engine
        self.client = engine.client
        self.labels = labels
        self.kill_grace_seconds = kill_grace_seconds
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
        self.warm = warm  # a pooled container of this job's class, waiting for it

    def run(self) -> JobResult:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        warm = False
        try:
            t1 = time.monotonic()
            warm = self.warm is not None and self._hand_over()
            if not warm:
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
        except ENGINE_ERRORS as exc:
            self.log.error("sandbox failure", error=str(exc))
            result = JobResult(status=Status.SANDBOX_ERROR, exit_code=None,
                               detail=f"sandbox failure: {exc}")
        finally:
            t3 = time.monotonic()
            self._teardown()
            timings["teardown_s"] = time.monotonic() - t3
        return replace(result, timings=Timings(**timings, warm=warm))

    def _teardown(self) -> None:
        if self._api is not None:
            self._api.close()  # idempotent; covers a start that failed after attach
        for obj in (self.container, self.volume):
            if obj is not None:
                _teardown_quietly(obj)

    def _hand_over(self) -> bool:
        """Give the job to its pooled container: attach, then place its files and the go
        file the waiting runner polls for. False (the pooled container destroyed) if it
        is no longer waiting: the caller starts cold."""
        warm, cold_name = self.warm, self.name
        assert warm is not None
        self.warm = None
        try:
            warm.container.reload()
            if warm.container.status != "running":
                raise docker.errors.NotFound("the pooled container is not waiting")
            self.name, self.container, self.volume = warm.name, warm.container, warm.volume
            self.log = log.bind(job=self.name)
            self._api, self._output = warm.api, warm.output  # attached before it started
            if not self.container.put_archive(RUNNER_DIR, archive.pack_job(
                    self.spec.files, runner_job(self.spec), go=True)):
                raise docker.errors.DockerException("could not place the job's files")
        except ENGINE_ERRORS as exc:
            self.log.info("pooled container unusable; starting cold", error=str(exc))
            self._api, self._output = None, ()
            self.container = self.volume = None
            self.name, self.log = cold_name, log.bind(job=cold_name)
            destroy(warm)
            return False
        return True

    def _create(self) -> None:
        self.volume = self.client.volumes.create(name=self.name, labels=self.labels)
        self.container = self.client.containers.create(
            **container_kwargs(self.spec, image=self.image, name=self.name,
                               volume=self.volume.name, labels=self.labels))
        job = runner_job(self.spec)
        if not self.container.put_archive(RUNNER_DIR, archive.pack_job(self.spec.files, job)):
            raise docker.errors.DockerException("could not place the job's files")

    def _attach(self) -> None:
        """Open the output stream of the created container. Attached after start, a job
        that exits first can leave the stream empty (seen: a print lost in CI)."""
        # A hijacked attach connection must never go back to the shared pool: give the
        # stream a client of its own and close it when the job ends.
        self._api = self.engine.dedicated()
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
        except (*ENGINE_ERRORS, OSError):
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
        state = self.container.wait(timeout=30 + self.kill_grace_seconds)
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


def class_key(spec: JobSpec, image: str, labels: dict[str, str]) -> str:
    """A container's class (warm_pool.py): its whole configuration as one string, but for
    its name, its volume and its deadline. Jobs of one class can use each other's pooled
    containers, and nothing that differs in the configuration can be shared."""
    kept = {k: v for k, v in labels.items() if k != LABEL_DEADLINE}
    kwargs = container_kwargs(spec, image=image, name="", volume="", labels=kept)
    kwargs.pop("name")
    kwargs["environment"] = {k: v for k, v in kwargs["environment"].items()
                             if k != "BILEVEL_JOB"}
    kwargs["mounts"] = [m for m in kwargs["mounts"] if m.get("Target") != RUNNER_DIR]
    return json.dumps(kwargs, sort_keys=True, default=repr)


def make_warm(engine: DockerEngine, spec: JobSpec, image: str, labels: dict[str, str],
              key: str, idle_seconds: float) -> Warm:
    """Create and start one pooled container of `spec`'s class: a cold job's container
    in every setting, but the runner waits for its job (--pooled) and it carries the
    pool label. Engine errors raise."""
    name = f"bilevel-job-{uuid.uuid4().hex[:12]}"
    client = engine.client
    volume = client.volumes.create(name=name, labels=labels)
    container = api = None
    try:
        kwargs = container_kwargs(spec, image=image, name=name, volume=volume.name,
                                  labels={**labels, LABEL_POOL: "1"})
        kwargs["command"] = [*kwargs["command"], POOLED_FLAG,
                             f"{idle_seconds + RUNNER_IDLE_SLACK:.0f}"]
        container = client.containers.create(**kwargs)
        api = engine.dedicated()  # attached before start, as a cold job: no output lost
        output = api.attach(container.id, stdout=True, stderr=True, stream=True, logs=True,
                            demux=True)
        container.start()
    except BaseException:
        if api is not None:
            api.close()
        for obj in (container, volume):
            if obj is not None:
                with contextlib.suppress(*ENGINE_ERRORS):
                    obj.remove(force=True)
        raise
    return Warm(key, name, container, volume, spec.limits.memory_bytes, time.monotonic(),
                api, output)


def _cpu_seconds(runner: dict[str, Any]) -> float | None:
    """The runner's CPU measurement, if it is a finite non-negative number."""
    raw = runner.get("cpu_seconds")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if math.isfinite(value) and value >= 0 else None


def _looks_like_oom(job: DockerJob) -> bool:
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
