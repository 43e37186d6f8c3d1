"""The container configuration every sandbox job gets. Nothing here reads the request
beyond its bounded limits, runtime, GPU ids and read-only data mounts: a request can
never weaken the hardening."""

from __future__ import annotations

import math
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from controller.sandbox.seccomp import security_opt
from controller.sandbox.spec import JOB_ROOT, RUNNER_DIR, JobSpec

SANDBOX_UID = 10001
# The runner is PID 1 and root: its interpreter is the image's own, by absolute path,
# isolated (-I: no PYTHON* variables, no user site, no script directory on sys.path) and
# without site processing (-S: no .pth file or sitecustomize runs), so nothing a task, a
# job or a package can place on a path is executed or imported by it.
RUNNER_COMMAND = ["/opt/venv/bin/python3", "-I", "-S", "/opt/bilevel/runner.py"]
# The runner starts with only these; it starts the job as SANDBOX_UID with no
# capabilities and an empty bounding set (sandbox_image/runner.py), then keeps only
# KILL and SETUID for itself (to kill every process of the job and to read what the
# job wrote as the job's uid). No DAC_READ_SEARCH, ever: with it, `open_by_handle_at`
# walks the host's filesystem (the "shocker" escape). Another uid without CAP_KILL or
# CAP_SYS_PTRACE cannot signal or trace the runner, under runc or gVisor.
# The job's volume is the runner's: job.json, the job's files, the result.
VOLUME_TARGET = RUNNER_DIR
RUNNER_CAPS = ["CHOWN", "KILL", "SETGID", "SETPCAP", "SETUID"]
# Bound what the json-file log driver keeps on the host; the executor reads the live
# stream and kills a job at its own output cap long before this.
LOG_MAX_BYTES = "16m"


def gpu_device_requests(gpu_ids: tuple[str, ...]) -> list[DeviceRequest]:
    """One request naming exactly the job's GPUs, so it never sees another's."""
    if not gpu_ids:
        return []
    return [DeviceRequest(device_ids=list(gpu_ids), capabilities=[["gpu"]])]


# Host tasks gVisor's sentry may hold for one sandbox, beyond 16 per job process. Its
# ptrace platform keeps stub processes and threads for the sandbox's tasks and makes more
# while a job churns against its process limit: a fork bomb held at pids=64 peaked at
# 4.2-5.4 thousand host tasks, at pids=256 at 6.5 thousand (5 runs). At the old ceiling
# of 8 x pids + 256 the sentry died (exit 2) and the bomb came back as a sandbox failure.
RUNSC_HOST_TASKS = 8192


def host_pids_limit(spec: JobSpec) -> int:
    """Under runc the job's processes are host tasks, so the cgroup limit is the job's.
    gVisor's sentry needs host tasks of its own for the tasks it runs (and dies when
    the cgroup refuses one), so there the job's limit is enforced inside the sandbox as
    RLIMIT_NPROC by the runner, and the host cgroup only bounds the sentry, with room
    for what it was measured to need (RUNSC_HOST_TASKS)."""
    if spec.runtime == "runsc":
        return spec.limits.pids * 16 + RUNSC_HOST_TASKS
    return spec.limits.pids


def in_sandbox_nproc(spec: JobSpec) -> int | None:
    """RLIMIT_NPROC for the job, only where it is per-sandbox (gVisor's own kernel);
    under runc it would count every container's processes of the same host uid. The
    runner (root) is not among the job uid's processes, so one is taken off: the job
    stays below `pids`, as under runc, where the cgroup counts the runner too."""
    return max(1, spec.limits.pids - 1) if spec.runtime == "runsc" else None


# Thread pools of the numeric libraries size themselves by the cores the container sees,
# which are the host's, not its CPU limit: torch, OpenMP and BLAS started one thread per
# host core against a 1-CPU limit and ran 7-25 times slower (issue #24). torch reads
# OMP_NUM_THREADS when it is imported (torch.get_num_threads()).
THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def job_env(spec: JobSpec) -> dict[str, str]:
    """The job's environment: every thread count at its CPU limit (rounded up, at least
    1), under what the job spec sets itself. A value the spec gives wins: it is the
    user's explicit choice, within the allow-list (spec.check_env), and the cgroup's CPU
    limit holds whatever it says. The spec's OMP_NUM_THREADS is the default of the
    others too: torch built with MKL sizes its pool by MKL's count, not OpenMP's."""
    threads = str(max(1, math.ceil(spec.limits.cpus)))
    omp = spec.env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1:
        threads = omp
    return {**dict.fromkeys(THREAD_ENV_NAMES, threads), **spec.env}


def runner_job(spec: JobSpec) -> dict[str, Any]:
    """The runner's job.json: what it starts and the bounds it applies itself."""
    return {"command": list(spec.command), "env": job_env(spec),
            "disk_bytes": spec.limits.disk_bytes, "nproc": in_sandbox_nproc(spec),
            "returned_file_bytes": spec.limits.returned_file_bytes}


def job_tmpfs_options(disk_bytes: int) -> str:
    """/job: the job's writable area, a tmpfs of exactly disk_bytes, so a write past it
    fails (ENOSPC) wherever the job puts it. Root-owned 0755, so the job cannot rename
    what the runner made in it. Its pages are memory: they count against the
    container's memory limit (under runc and gVisor alike)."""
    return f"rw,exec,nosuid,nodev,size={disk_bytes},mode=0755"


def container_kwargs(spec: JobSpec, *, image: str, name: str, volume: str,
                     labels: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create` of one hardened job. The volume
    is the runner's (/bilevel: job.json, the job's files, the result); the job works
    in the /job tmpfs."""
    limits = spec.limits
    mounts = [Mount(target=VOLUME_TARGET, source=volume, type="volume", read_only=False)]
    mounts += [Mount(target=m.target, source=m.source, type="volume", read_only=True)
               for m in spec.data_mounts]
    env = {"BILEVEL_JOB": name}
    if spec.gpu_ids:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
    return {
        "image": image,
        "command": RUNNER_COMMAND,
        "name": name,
        "labels": labels,
        "user": "0:0",  # the runner only; the job runs as SANDBOX_UID
        "working_dir": JOB_ROOT,
        "environment": env,
        "runtime": spec.runtime,
        "network_mode": "none",
        "network_disabled": True,
        "cap_drop": ["ALL"],
        "cap_add": list(RUNNER_CAPS),
        "security_opt": security_opt(spec.runtime),
        "read_only": True,
        "privileged": False,
        "ipc_mode": "private",
        # The runner is the init: it reaps orphans, kills every process of the job
        # before it reports, and runs as another uid than the job.
        "init": False,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmp_bytes}",
                  JOB_ROOT: job_tmpfs_options(limits.disk_bytes)},
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
