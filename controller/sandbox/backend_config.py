"""The sandbox backends' settings and errors, apart from the backends: the CLI, the config file and
the controller's config read them without importing the Docker SDK or Ray (start-up time
of every command)."""

from __future__ import annotations

from dataclasses import dataclass

SLOT_RESOURCE = "bilevel_sandbox"


class SandboxUnavailable(RuntimeError):
    """The Docker engine (or the sandbox image) is not usable. Nothing ran."""


class SandboxBusy(RuntimeError):
    """Every slot is taken and the caller did not want to wait."""


@dataclass(frozen=True)
class ExecutorConfig:
    """How this controller uses the engine. `image` None means the image built from
    this checkout's sandbox_image/ (see `bilevel image build`). `runtime` is the
    deployment's floor: "runsc" runs every job under gVisor, whatever it asks for;
    "auto" does so where runsc is registered with the engine (with --oci-seccomp), and
    otherwise falls back to runc with a warning; "runc" lets a job choose.
    With `gpu_slots`, there is one job slot per GPU slot and each job gets its slot's
    GPUs; without, jobs get no GPU. A job never chooses its GPUs: `gpu_ids` in a spec
    is refused (see GpuSlots.check_request)."""

    image: str | None = None
    slots: int = 2
    namespace: str = "default"
    docker_url: str | None = None
    reap_interval_seconds: float = 60.0
    allowed_images: tuple[str, ...] = ()
    kill_grace_seconds: float = 5.0
    runtime: str = "auto"
    gpu_slots: tuple[tuple[str, ...], ...] = ()


class RayConfigError(ValueError):
    """Bad Ray backend settings; `field` names the setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


@dataclass(frozen=True)
class RayConfig:
    """Where the cluster is and what one slot is: one unit of `slot_resource` (only
    nodes prepared with Docker, gVisor and the sandbox image advertise it), plus
    `cpus_per_slot` CPUs and `gpus_per_slot` GPUs of Ray's accounting."""

    address: str
    slot_resource: str = SLOT_RESOURCE
    cpus_per_slot: float = 1.0
    gpus_per_slot: float = 0.0
    max_attempts: int = 3

    def validate(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RayConfigError("ray_address", f"must be HOST:PORT, got {self.address!r}")
        if not self.slot_resource.replace("_", "").isalnum():
            raise RayConfigError("ray_slot_resource", f"invalid name {self.slot_resource!r}")
        if not 0 <= self.cpus_per_slot <= 256 or not 0 <= self.gpus_per_slot <= 16:
            raise RayConfigError("ray_cpus_per_slot", "cpus in [0, 256], gpus in [0, 16]")
        if not 1 <= self.max_attempts <= 10:
            raise RayConfigError("ray_max_attempts", "must be in [1, 10]")
