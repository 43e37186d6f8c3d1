"""The container configuration every sandbox job gets. Nothing here reads the request
beyond its bounded limits, runtime, GPU ids and read-only data mounts: a request can
never weaken the hardening (REFERENCE.md §4)."""

from __future__ import annotations

from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from controller.sandbox.spec import JOB_ROOT, JobSpec

SANDBOX_UID = 10001
RUNNER_COMMAND = ["python3", "/opt/bilevel/runner.py"]
# Bound what the json-file log driver keeps on the host; the executor reads the live
# stream and kills a job at its own output cap long before this.
LOG_MAX_BYTES = "16m"


def gpu_device_requests(gpu_ids: tuple[str, ...]) -> list[DeviceRequest]:
    """One request naming exactly the job's GPUs, so it never sees another's."""
    if not gpu_ids:
        return []
    return [DeviceRequest(device_ids=list(gpu_ids), capabilities=[["gpu"]])]


def host_pids_limit(spec: JobSpec) -> int:
    """Under runc the job's processes are host tasks, so the cgroup limit is the job's.
    gVisor's sentry needs host threads of its own for every task it runs (and dies when
    the cgroup refuses one), so there the job's limit is enforced inside the sandbox as
    RLIMIT_NPROC by the runner, and the host cgroup gets headroom for the sentry."""
    if spec.runtime == "runsc":
        return spec.limits.pids * 8 + 256
    return spec.limits.pids


def in_sandbox_nproc(spec: JobSpec) -> int | None:
    """RLIMIT_NPROC for the job, only where it is per-sandbox (gVisor's own kernel);
    under runc it would count every container's processes of the same host uid."""
    return spec.limits.pids if spec.runtime == "runsc" else None


def container_kwargs(spec: JobSpec, *, image: str, name: str, volume: str,
                     labels: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create` of one hardened job."""
    limits = spec.limits
    mounts = [Mount(target=JOB_ROOT, source=volume, type="volume", read_only=False)]
    mounts += [Mount(target=m.target, source=m.volume, type="volume", read_only=True)
               for m in spec.data_mounts]
    env = {"BILEVEL_JOB": name}
    if spec.gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
    return {
        "image": image,
        "command": RUNNER_COMMAND,
        "name": name,
        "labels": labels,
        "user": f"{SANDBOX_UID}:{SANDBOX_UID}",
        "working_dir": f"{JOB_ROOT}/work",
        "environment": env,
        "runtime": spec.runtime,
        "network_mode": "none",
        "network_disabled": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "privileged": False,
        "ipc_mode": "private",
        # The runner is the init: it reaps orphans and, as a non-dumpable PID 1, can be
        # neither killed nor traced by the job (sandbox_image/runner.py).
        "init": False,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmp_bytes}"},
        "mounts": mounts,
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,
        "shm_size": min(limits.memory_bytes // 4, 1 << 30),
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": host_pids_limit(spec),
        "ulimits": [Ulimit(name="core", soft=0, hard=0),
                    Ulimit(name="nofile", soft=1024, hard=1024)],
        "log_config": LogConfig(type="json-file",
                                config={"max-size": LOG_MAX_BYTES, "max-file": "1"}),
        "device_requests": gpu_device_requests(spec.gpu_ids),
        "stdin_open": False,
        "tty": False,
        "detach": True,
    }
