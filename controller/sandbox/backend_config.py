"""The sandbox backends' settings and errors, apart from the backends: the CLI, the config
file and the controller's config read them without importing the Docker SDK or Ray
(start-up time of every command). An invalid setting raises FieldError naming its key
(controller/errors.py); the configuration loader says where its value came from."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from controller.errors import FieldError

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
    # Warm containers (warm_pool.py); None: none. The controller's config (config_file.py)
    # gives one sized to the slots unless sandbox.pool_size says otherwise.
    pool: PoolConfig | None = None


@dataclass(frozen=True)
class PoolConfig:
    """The warm pool (warm_pool.py): at most `size` waiting containers per class (0: no
    pool, every job starts cold), `memory_bytes` of memory limits over all waiting
    containers, `idle_seconds` before a waiting one is removed."""

    size: int = 0
    memory_bytes: int = 8 << 30
    idle_seconds: float = 120.0


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
            raise FieldError(RAY_ADDRESS_KEY, f"must be HOST:PORT, got {self.address!r}")
        if not self.slot_resource.replace("_", "").isalnum():
            raise FieldError("ray.slot_resource", f"invalid name {self.slot_resource!r}")
        if not 0 <= self.cpus_per_slot <= 256:
            raise FieldError("ray.cpus_per_slot", f"must be in [0, 256], got "
                                                  f"{self.cpus_per_slot:g}")
        if not 0 <= self.gpus_per_slot <= 16:
            raise FieldError("ray.gpus_per_slot", f"must be in [0, 16], got "
                                                  f"{self.gpus_per_slot:g}")
        if not 1 <= self.max_attempts <= 10:
            raise FieldError("ray.max_attempts", f"must be in [1, 10], got "
                                                 f"{self.max_attempts}")


BACKENDS = ("docker", "ray")
BACKEND_KEY = "sandbox.backend"
RAY_ADDRESS_KEY = "sandbox.ray_address"


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs sandbox jobs (factory.py builds it): "docker", this host's
    Docker engine, or "ray", the nodes of the Ray cluster `ray` names."""

    kind: str = "docker"
    ray: RayConfig | None = None

    @classmethod
    def of(cls, kind: str | None, ray_address: str | None) -> BackendConfig:
        """The settings `sandbox.backend` and `sandbox.ray_address` give (unchecked)."""
        return cls(kind or "docker", RayConfig(ray_address) if ray_address else None)

    def validate(self) -> None:
        """FieldError naming the setting."""
        if self.kind not in BACKENDS:
            raise FieldError(BACKEND_KEY, f"use one of {', '.join(BACKENDS)}, got "
                                          f"{self.kind!r}")
        if self.kind == "docker":
            if self.ray is not None:
                raise FieldError(RAY_ADDRESS_KEY, "is only for the ray backend (--backend "
                                                  "ray)")
            return
        if self.ray is None:
            raise FieldError(RAY_ADDRESS_KEY, f"{BACKEND_KEY} = \"ray\" (--backend ray) "
                                              "needs HOST:PORT of the cluster's head")
        self.ray.validate()
        if importlib.util.find_spec("ray") is None:
            raise FieldError(BACKEND_KEY, "ray is not installed: pip install -e '.[ray]'")
