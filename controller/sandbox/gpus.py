"""GPU slots: which GPUs (or MIG slices) one sandbox job may use, and who holds each.

A slot is a tuple of explicit device ids handed to Docker as a DeviceRequest (see
hardening.gpu_device_requests); one job holds a slot at a time, so a trial never sees
another trial's GPU. Slots come from configuration or from `nvidia-smi -L`, run on the
host when it is on PATH, else in a throwaway container on the engine that will run the
jobs (the controller itself may be a container without GPU access).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Sequence

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest

from controller.sandbox.spec import SpecError

GpuSlot = tuple[str, ...]

# `nvidia-smi -L` lines: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d5b...)" and, under a
# GPU in MIG mode, "  MIG 1g.10gb     Device  0: (UUID: MIG-c6d4...)".
_GPU_LINE = re.compile(r"^GPU\s+(\d+):.*\(UUID:\s*(GPU-[0-9A-Za-z-]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG\s+.*\(UUID:\s*(MIG-[0-9A-Za-z-]+)\)")
_ID_CHARS = re.compile(r"^[0-9A-Za-z:.\-]+$")
PROBE_TIMEOUT_SECONDS = 60


class GpuConfigError(ValueError):
    """GPU slots could not be configured or discovered; the message says what to do."""


def parse_slot_list(entries: Iterable[str], where: str) -> tuple[GpuSlot, ...]:
    """Slots from configuration: each entry is one slot, a device id (index, GPU-UUID,
    MIG-UUID) or several joined by '+' for a multi-GPU trial ("0+1")."""
    slots: list[GpuSlot] = []
    seen: set[str] = set()
    for entry in entries:
        ids = tuple(part.strip() for part in str(entry).split("+"))
        for gid in ids:
            if not gid or not _ID_CHARS.match(gid):
                raise GpuConfigError(f"{where}: invalid GPU id {gid!r} in {entry!r}; use an "
                                     "index, a GPU-/MIG- UUID from `nvidia-smi -L`, or "
                                     "'0+1' for a two-GPU slot")
            if gid in seen:
                raise GpuConfigError(f"{where}: GPU {gid!r} is in two slots; a GPU belongs "
                                     "to one slot so that trials never share it")
            seen.add(gid)
        slots.append(ids)
    if not slots:
        raise GpuConfigError(f"{where}: the list is empty; use \"none\" for no GPUs")
    return tuple(slots)


def parse_nvidia_smi(listing: str) -> tuple[GpuSlot, ...]:
    """One slot per GPU, or per MIG slice of a GPU in MIG mode (the GPU itself is then
    not a slot: a job holding it would see every slice). Ids are UUIDs, which stay
    stable when indexes are renumbered."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        if match := _GPU_LINE.match(line):
            gpus.append((match.group(2), []))
        elif (match := _MIG_LINE.match(line)) and gpus:
            gpus[-1][1].append(match.group(1))
    slots: list[GpuSlot] = []
    for gpu_uuid, migs in gpus:
        if migs:
            slots.extend((mig,) for mig in migs)
        else:
            slots.append((gpu_uuid,))
    return tuple(slots)


def _probe_engine(client: docker.DockerClient, image: str) -> str:
    """`nvidia-smi -L` in a short-lived, hardened container that may see every GPU (the
    NVIDIA toolkit mounts nvidia-smi for the `utility` capability)."""
    container = client.containers.create(
        image, ["nvidia-smi", "-L"], name=f"bilevel-gpu-probe-{uuid.uuid4().hex[:10]}",
        entrypoint=[], user="10001:10001", network_disabled=True, network_mode="none",
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
        labels={"io.bilevel.gpu-probe": "1"},
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu", "utility"]])])
    try:
        container.start()
        state = container.wait(timeout=PROBE_TIMEOUT_SECONDS)
        output: bytes = container.logs(stdout=True, stderr=True)
        if state.get("StatusCode") != 0:
            raise GpuConfigError(f"nvidia-smi -L failed in a container of {image}: "
                                 f"{output.decode(errors='replace')[-500:]}")
        return output.decode(errors="replace")
    finally:
        container.remove(force=True)


def discover(client: docker.DockerClient | None, image: str | None) -> tuple[GpuSlot, ...]:
    """Slots for every GPU or MIG slice of this host; raises GpuConfigError when there
    are none or they cannot be listed, never falls back to CPU silently."""
    how = "nvidia-smi -L"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_SECONDS, check=False)
        if done.returncode != 0:
            raise GpuConfigError(f"nvidia-smi -L failed: {done.stderr.strip()[-500:]}")
        listing = done.stdout
    elif client is not None and image:
        how = f"nvidia-smi -L in a container of {image}"
        try:
            listing = _probe_engine(client, image)
        except docker.errors.ImageNotFound as exc:
            raise GpuConfigError(f"cannot look for GPUs: sandbox image {image} is missing "
                                 "(build it first, see README#deploy)") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise GpuConfigError(
                f"the Docker engine cannot give containers GPUs ({exc}); install the NVIDIA "
                "Container Toolkit on the host and restart dockerd, or set sandbox.gpus to "
                "\"none\" (env BILEVEL_SANDBOX__GPUS=none) to run on CPU") from None
    else:
        raise GpuConfigError("sandbox.gpus = \"auto\" needs nvidia-smi on PATH or a reachable "
                             "Docker engine and sandbox image; or list the GPU ids")
    slots = parse_nvidia_smi(listing)
    if not slots:
        raise GpuConfigError(f"{how} found no GPU; set sandbox.gpus to \"none\" to run on "
                             "CPU, or list the GPU ids")
    return slots


def discover_on(docker_url: str | None, image: str | None) -> tuple[GpuSlot, ...]:
    """`discover` with the engine at `docker_url` (default: from the environment) as the
    fallback prober; an engine that does not answer is no fallback."""
    try:
        client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
    except docker.errors.DockerException:
        return discover(None, image)
    try:
        return discover(client, image)
    finally:
        client.close()


class GpuSlots:
    """The free GPU slots of one executor. The executor's slot scheduler
    (fair_share.py) grants a GPU job only while a GPU slot is free, so `take` never
    finds the pool empty."""

    def __init__(self, slots: Sequence[GpuSlot]) -> None:
        self.slots = tuple(slots)
        self._free: deque[GpuSlot] = deque(self.slots)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.slots)

    def check_request(self, gpu_ids: Sequence[str]) -> None:
        """Refuse GPUs a job names itself: the controller hands out its slots, and with
        none configured there are no GPUs to give (a client must never pick one of the
        host's GPUs). Raises SpecError naming `gpu_ids`."""
        if not gpu_ids:
            return
        if self.slots:
            raise SpecError("gpu_ids", "GPUs are assigned by the controller, one slot per "
                                       "job: leave gpu_ids empty")
        raise SpecError("gpu_ids", f"this controller has no GPU slots, so no job may use "
                                   f"a GPU (got {list(gpu_ids)!r}); configure sandbox.gpus "
                                   "(\"auto\" or a list of ids) on the controller")

    def take(self) -> GpuSlot:
        """A free slot, or () when this executor has no GPU slots."""
        if not self.slots:
            return ()
        with self._lock:
            if not self._free:
                raise RuntimeError("no free GPU slot: take() without holding a job slot")
            return self._free.popleft()

    def give(self, slot: GpuSlot) -> None:
        if slot:
            with self._lock:
                self._free.append(slot)
