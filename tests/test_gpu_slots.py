"""GPU scheduling: one job per GPU (or MIG slice), by explicit device id, so a trial never
sees another's GPU. No GPU here: the device requests are asserted as Docker receives
them, and the executor's assignment with its job runner stubbed out."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from controller.sandbox import executor as executor_module
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.gpus import (
    GpuConfigError,
    GpuSlots,
    discover,
    parse_nvidia_smi,
    parse_slot_list,
)
from controller.sandbox.hardening import container_kwargs
from controller.sandbox.spec import JobResult, JobSpec, SpecError, Status

PLAIN = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)
"""
MIXED = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)
  MIG 3g.20gb     Device  0: (UUID: MIG-bbbbbbbb-0000-5000-8000-000000000000)
  MIG 3g.20gb     Device  1: (UUID: MIG-cccccccc-0000-5000-8000-000000000000)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-dddddddd-0000-0000-0000-000000000000)
"""


def _kwargs(gpu_ids: tuple[str, ...]) -> dict[str, Any]:
    spec = JobSpec(files={}, command=("true",), gpu_ids=gpu_ids)
    return container_kwargs(spec, image="img", name="job", volume="vol", labels={})


@pytest.mark.parametrize("slot", [("0",), ("GPU-11111111-2222-3333-4444-555555555555",),
                                  ("MIG-bbbbbbbb-0000-5000-8000-000000000000",), ("2", "3")])
def test_a_slot_becomes_one_device_request_naming_exactly_its_ids(slot: tuple[str, ...]) -> None:
    kwargs = _kwargs(slot)
    [request] = kwargs["device_requests"]
    assert request["DeviceIDs"] == list(slot)
    assert request["Count"] == 0  # never "all" or "any n": only these ids
    assert request["Capabilities"] == [["gpu"]]
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(slot)


def test_a_job_without_a_slot_requests_no_device() -> None:
    kwargs = _kwargs(())
    assert kwargs["device_requests"] == []
    assert "NVIDIA_VISIBLE_DEVICES" not in kwargs["environment"]


def test_nvidia_smi_listing_gives_one_slot_per_gpu_by_uuid() -> None:
    assert parse_nvidia_smi(PLAIN) == (("GPU-11111111-2222-3333-4444-555555555555",),
                                       ("GPU-66666666-7777-8888-9999-000000000000",))


def test_a_gpu_in_mig_mode_gives_one_slot_per_slice_and_none_for_itself() -> None:
    assert parse_nvidia_smi(MIXED) == (("MIG-bbbbbbbb-0000-5000-8000-000000000000",),
                                       ("MIG-cccccccc-0000-5000-8000-000000000000",),
                                       ("GPU-dddddddd-0000-0000-0000-000000000000",))


def test_no_gpu_in_the_listing_gives_no_slot() -> None:
    assert parse_nvidia_smi("No devices found.\n") == ()


def test_configured_slots_are_ids_or_plus_joined_groups() -> None:
    assert parse_slot_list(["0", "1"], "x") == (("0",), ("1",))
    assert parse_slot_list(["0+1", "2+3"], "x") == (("0", "1"), ("2", "3"))


@pytest.mark.parametrize("entries, message", [
    (["0", "0"], "in two slots"), (["0+1", "1"], "in two slots"),
    (["0;rm"], "invalid GPU id"), (["0+"], "invalid GPU id"), ([], "empty")])
def test_deny_ambiguous_or_malformed_gpu_slots(entries: list[str], message: str) -> None:
    with pytest.raises(GpuConfigError, match=message):
        parse_slot_list(entries, "sandbox.gpus")


def test_the_pool_never_hands_one_slot_to_two_holders() -> None:
    pool = GpuSlots([("0",), ("1",)])
    first, second = pool.take(), pool.take()
    assert {first, second} == {("0",), ("1",)}
    with pytest.raises(RuntimeError):
        pool.take()
    pool.give(first)
    assert pool.take() == first


def test_discovery_never_falls_back_to_cpu_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(GpuConfigError, match="nvidia-smi"):
        discover(None, None)


# The executor: a real engine, the job runner stubbed so no GPU is needed.


class _Recorder:
    """Stands in for the Docker backend's DockerJob: records the spec each job got,
    holds it a while."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[tuple[str, ...]] = []
        self.seen: list[JobSpec] = []
        self.overlap = False

    def __call__(self, _executor: Any, spec: JobSpec, *_args: Any) -> Any:
        recorder = self

        class Job:
            def run(self) -> JobResult:
                with recorder.lock:
                    held = {g for ids in recorder.running for g in ids}
                    recorder.overlap |= bool(held & set(spec.gpu_ids))
                    recorder.running.append(spec.gpu_ids)
                    recorder.seen.append(spec)
                time.sleep(0.05)
                with recorder.lock:
                    recorder.running.remove(spec.gpu_ids)
                return JobResult(status=Status.OK, exit_code=0)

        return Job()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    fake = _Recorder()
    monkeypatch.setattr(executor_module, "DockerJob", fake)
    return fake


@pytest.fixture
def gpu_executor(sandbox_image: str) -> Iterator[DockerExecutor]:
    ex = DockerExecutor(ExecutorConfig(
        image=sandbox_image, namespace=f"pytest-gpu-{uuid.uuid4().hex[:8]}",
        gpu_slots=(("0",), ("1",), ("MIG-x",))))
    yield ex
    ex.close()


@pytest.mark.docker
def test_concurrent_jobs_each_get_their_own_gpu_slot(gpu_executor: DockerExecutor,
                                                     recorder: _Recorder) -> None:
    spec = JobSpec(files={}, command=("true",))
    threads = [threading.Thread(target=gpu_executor.run_job, args=(spec,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recorder.seen) == 12
    assert not recorder.overlap
    assert {s.gpu_ids for s in recorder.seen} == {("0",), ("1",), ("MIG-x",)}


@pytest.mark.docker
def test_deny_a_job_choosing_its_gpus_when_the_controller_assigns_them(
        gpu_executor: DockerExecutor, recorder: _Recorder) -> None:
    with pytest.raises(SpecError, match="assigned by the controller"):
        gpu_executor.run_job(JobSpec(files={}, command=("true",), gpu_ids=("1",)))
    assert recorder.seen == []


@pytest.mark.docker
def test_gpu_slots_set_the_number_of_job_slots(gpu_executor: DockerExecutor) -> None:
    taken = [gpu_executor.slots.try_acquire("pytest", gpus=1) for _ in range(4)]
    assert [t is not None for t in taken] == [True, True, True, False]
    for grant in taken[:3]:
        assert grant is not None
        gpu_executor.slots.release(grant)


@pytest.mark.docker
def test_a_runsc_deployment_runs_every_job_under_gvisor(sandbox_image: str,
                                                        recorder: _Recorder) -> None:
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, runtime="runsc",
                                        namespace=f"pytest-gpu-{uuid.uuid4().hex[:8]}"))
    try:
        ex.run_job(JobSpec(files={}, command=("true",), runtime="runc"))
        ex.run_job(JobSpec(files={}, command=("true",), runtime="runsc"))
    finally:
        ex.close()
    assert [s.runtime for s in recorder.seen] == ["runsc", "runsc"]


@pytest.mark.docker
def test_a_gpu_job_on_an_engine_without_nvidia_support_fails_as_a_sandbox_error(
        sandbox_image: str) -> None:
    """The request reaches Docker with the slot's ids; this engine has no GPU driver."""
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, gpu_slots=(("0",),),
                                        namespace=f"pytest-gpu-{uuid.uuid4().hex[:8]}"))
    try:
        result = ex.run_job(JobSpec(files={}, command=("true",)))
    finally:
        ex.close()
    assert result.status == Status.SANDBOX_ERROR
    assert "device driver" in result.detail


@pytest.mark.docker
def test_discovery_through_an_engine_without_gpus_says_what_to_install(
        docker_client: docker.DockerClient, sandbox_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(GpuConfigError, match="NVIDIA Container Toolkit"):
        discover(docker_client, sandbox_image)
    probes = docker_client.containers.list(all=True, filters={"label": "io.bilevel.gpu-probe"})
    assert probes == []
