"""What a Ray task runs on its node: one sandbox job through that node's own Docker engine.

This is our trusted code (the Ray cluster runs it); the job's code still only ever runs
inside the hardened container that the node-local DockerExecutor creates, exactly as on
the controller's host. The task gets the JobSpec, the executor settings (image tag pinned
by the controller, namespace, runtime floor) and, per data mount, a content hash and a Ray
object holding the data: nothing from the controller's environment, no API key, no token.

One DockerExecutor per settings lives in each Ray worker process: its start-up sweep and
reaper thread remove the containers a dead worker on this node left behind (ownership
labels, reaper.py), so leaked containers are reaped by the node that made them.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import docker
import docker.errors
import docker.types
import ray
import ray.exceptions

from controller.principals import SHARED
from controller.sandbox.backend_config import ExecutorConfig, SandboxUnavailable
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.reaper import OWNER_EXECUTE
from controller.sandbox.spec import DataMount, JobResult, JobSpec, Status

LABEL_NODE = "io.bilevel.ray.node"
LABEL_DIGEST = "io.bilevel.data.sha256"
_SRC = "/src"  # where a data volume is mounted in the export/fill helper containers
_DONE = ".bilevel-node-complete"


class NodeRefused(SandboxUnavailable):
    """This node cannot run the job as asked (no GPU for a GPU job, no image)."""


@dataclass(frozen=True)
class ShippedData:
    """A data volume's contents: a tar (entries under src/), its sha256, and its name."""

    digest: str
    tar: Any  # ray.ObjectRef[bytes]: fetched only by a node that lacks the volume


@dataclass(frozen=True)
class NodeJob:
    spec: JobSpec
    config: ExecutorConfig
    gpus_per_slot: float = 0.0
    data: tuple[ShippedData, ...] = ()  # one per spec.data_mounts entry, same order
    labels: dict[str, str] = field(default_factory=dict)
    job_id: str = ""
    board: Any = None  # the controller's CancelBoard actor handle
    principal: str = SHARED.name  # whose job it is (its container's label)


@dataclass(frozen=True)
class NodeResult:
    result: JobResult
    node_id: str


class CancelBoard:
    """The controller's list of cancelled jobs, a Ray actor on the controller's node.
    A running task polls it, so a cancel ends with the container killed and removed
    before the task returns (ray.cancel alone resolves the task before that)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def cancel(self, job_id: str) -> None:
        self._ids.add(job_id)

    def forget(self, job_id: str) -> None:
        self._ids.discard(job_id)

    def cancelled(self, job_id: str) -> bool:
        return job_id in self._ids


def _cancelled(job: NodeJob) -> bool:
    if job.board is None:
        return False
    try:
        return bool(ray.get(job.board.cancelled.remote(job.job_id), timeout=10))
    except ray.exceptions.RayError:
        return False  # the board is unreachable: keep running; the wall limit still holds


_EXECUTORS: dict[ExecutorConfig, DockerExecutor] = {}
_LOCK = threading.Lock()


def _executor(config: ExecutorConfig) -> DockerExecutor:
    with _LOCK:
        if config not in _EXECUTORS:
            _EXECUTORS[config] = DockerExecutor(config)
        return _EXECUTORS[config]


def run_on_node(job: NodeJob) -> NodeResult:
    """Run `job` here. A ray.cancel() (KeyboardInterrupt in this thread) kills and removes
    the container before the task ends."""
    node = ray.get_runtime_context().get_node_id()
    gpus = tuple(str(g) for g in ray.get_gpu_ids())
    if job.gpus_per_slot > 0 and not gpus:
        raise NodeRefused(f"Ray node {node} was given a GPU job but holds no GPU: only "
                          "nodes started with GPUs and the slot resource may run it")
    config = replace(job.config, gpu_slots=(gpus,) if gpus else (), slots=1)
    executor = _executor(config).for_owner(OWNER_EXECUTE, principal=job.principal)
    try:
        executor.engine.client.images.get(executor.image)
    except docker.errors.ImageNotFound:
        raise NodeRefused(f"Ray node {node} lacks the sandbox image {executor.image}: load "
                          "or build it there (see deploy/ray/)") from None
    if _cancelled(job):  # cancelled while it waited for a slot
        return NodeResult(JobResult(status=Status.KILLED, exit_code=None,
                                    detail="cancelled"), node)
    spec = _local_mounts(executor, job)
    spec = replace(spec, labels={**spec.labels, **job.labels, LABEL_NODE: node})
    cancel = threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = executor.run_job(spec, cancel=cancel)
        except BaseException as exc:  # handed to the task's thread, raised there
            box["error"] = exc

    thread = threading.Thread(target=work, name="bilevel-ray-job", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
            if thread.is_alive() and not cancel.is_set() and _cancelled(job):
                cancel.set()
    except KeyboardInterrupt:  # ray.cancel: stop the container, then end the task
        cancel.set()
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    return NodeResult(box["result"], node)


def _local_mounts(executor: DockerExecutor, job: NodeJob) -> JobSpec:
    """The spec with each data mount pointing at this node's copy of its data, made
    from the shipped tar (hash-checked) the first time this node needs it."""
    mounts = []
    for mount, data in zip(job.spec.data_mounts, job.data, strict=True):
        name = f"bilevel-node-data-{data.digest[:40]}"
        with _LOCK:
            _ensure_volume(executor, name, data)
        mounts.append(DataMount(source=name, target=mount.target))
    return replace(job.spec, data_mounts=tuple(mounts))


def _helper(client: docker.DockerClient, image: str, volume: str) -> Any:
    """A never-started container with `volume` at /src, for copying files in or out."""
    return client.containers.create(
        image, command=["true"], name=f"bilevel-data-io-{uuid.uuid4().hex[:10]}",
        network_disabled=True, labels={"io.bilevel.data": "1"},
        mounts=[docker.types.Mount(target=_SRC, source=volume, type="volume")])


def _ensure_volume(executor: DockerExecutor, name: str, data: ShippedData) -> None:
    client = executor.engine.client
    try:
        volume = client.volumes.get(name)
        if (volume.attrs.get("Labels") or {}).get(LABEL_DIGEST) == data.digest and \
                _complete(client, executor.image, name):
            return
        volume.remove(force=True)
    except docker.errors.NotFound:
        pass
    blob = ray.get(data.tar)
    if hashlib.sha256(blob).hexdigest() != data.digest:
        raise NodeRefused(f"data for volume {name} arrived with the wrong sha256; refusing it")
    client.volumes.create(name=name, labels={"io.bilevel.data": "1", LABEL_DIGEST: data.digest})
    helper = _helper(client, executor.image, name)
    try:
        mark = io.BytesIO()
        with tarfile.open(fileobj=mark, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(_DONE), io.BytesIO(b""))
        if not helper.put_archive("/", blob) or not helper.put_archive(_SRC, mark.getvalue()):
            raise NodeRefused(f"could not fill data volume {name}")
    finally:
        helper.remove(force=True)


def _complete(client: docker.DockerClient, image: str, name: str) -> bool:
    helper = _helper(client, image, name)
    try:
        helper.get_archive(f"{_SRC}/{_DONE}")
        return True
    except docker.errors.NotFound:
        return False
    finally:
        helper.remove(force=True)


def export_volume(client: docker.DockerClient, image: str, volume: str,
                  max_bytes: int) -> tuple[str, bytes]:
    """(sha256, tar) of a controller-side data volume, entries under src/; refuses one
    over `max_bytes` (data is shipped through Ray's object store)."""
    helper = _helper(client, image, volume)
    try:
        chunks, _ = helper.get_archive(_SRC)
        out = bytearray()
        for chunk in chunks:
            out += chunk
            if len(out) > max_bytes:
                raise SandboxUnavailable(f"data volume {volume} exceeds {max_bytes} bytes, "
                                         "too large to ship through Ray; prepare it on "
                                         "each node instead")
    finally:
        helper.remove(force=True)
    blob = bytes(out)
    return hashlib.sha256(blob).hexdigest(), blob
