"""A task directory must never reach the host (issue: a .pth in a data folder mounted on
a site dir ran in the root runner, which held CAP_DAC_READ_SEARCH and read the host's
files through `open_by_handle_at`). Four layers stop it, each on its own: every
`test_deny_*` switches all the others off (tests/host_escape.py) and shows the attack
stopped; `test_escape_works_with_every_layer_off` is their sensitivity twin. Under
gVisor `open_by_handle_at` is not implemented, so there the twin shows the payload
running as root in PID 1 with the capability, and the deny tests show what each layer
took away.
"""

from __future__ import annotations

import errno
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from controller.research.tasks.errors import TaskError
from controller.research.tasks.manifest import load_task_dir
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.spec import DataMount, JobResult, JobSpec, Limits, SpecError, Status
from tests.host_escape import (
    CAP,
    READ_RUNNER_CAPS,
    SITE_DIR,
    HostCanary,
    Layers,
    UncheckedMount,
    host_canary,
    make_payload_volume,
    mask,
    proc_status,
    remove_volume,
    reports,
    runner_image_without_cap_drop,
    runner_report,
)

RUNTIMES = ("runc", "runsc")
DAC = 1 << CAP["DAC_READ_SEARCH"]


@dataclass(frozen=True)
class Escape:
    canary: HostCanary
    volume: str


@pytest.fixture
def escape(docker_client: docker.DockerClient, sandbox_image: str) -> Iterator[Escape]:
    with host_canary() as canary:
        volume = make_payload_volume(docker_client, sandbox_image, canary)
        try:
            yield Escape(canary, volume)
        finally:
            remove_volume(docker_client, volume)


def attack(executor: SandboxBackend, escape: Escape, runtime: str,
           mount: type[DataMount] = UncheckedMount) -> JobResult:
    spec = JobSpec(files={"main.py": b"print('job ran')\n"}, command=("python3", "main.py"),
                   runtime=runtime, limits=Limits(wall_seconds=60),
                   data_mounts=(mount(source=escape.volume, target=SITE_DIR),))
    return executor.run_job(spec)


# The mount allow-list: data goes under /data/ and nowhere else.

@pytest.mark.parametrize("target", [
    SITE_DIR, "/opt/venv/lib/python3.11/site-packages", "/opt/venv", "/bin", "/lib",
    "/lib64", "/sbin", "/var", "/var/tmp", "/home", "/run", "/root/.local", "/usr/lib",
    "/etc/ld.so.conf.d", "/opt/bilevel", "/job/work", "/bilevel", "/tmp", "/proc/self",
    "/", "/data", "/data/", "/data/../opt", "/data/./x", "/data//x", "/data/.hidden",
    "/data/x/", "data/x", "/DATA/x", "/data/x\n",
])
def test_deny_mount_targets_outside_data(target: str) -> None:
    with pytest.raises(SpecError) as caught:
        JobSpec(files={}, command=("true",),
                data_mounts=(DataMount(source="v", target=target),)).validate()
    assert caught.value.field == "data_mounts[0].target"
    assert "under /data/" in caught.value.reason


@pytest.mark.parametrize("target", ["/data/train", "/data/eval", "/data/a/b-c/d_e.1"])
def test_allow_mount_targets_under_data(target: str) -> None:
    JobSpec(files={}, command=("true",),
            data_mounts=(DataMount(source="v", target=target),)).validate()


def test_deny_a_manifest_mounting_on_a_site_dir(tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil/escape.pth").write_text("import os\n")
    (tmp_path / "train.py").write_text("LR = 0.1\n")
    (tmp_path / "bilevel-task.toml").write_text(textwrap.dedent(f"""\
        name = "evil"
        editable = "train.py"
        metric = "loss"
        direction = "minimize"
        [train]
        command = ["python3", "train.py"]
        mounts = {{"evil" = "{SITE_DIR}"}}
    """))
    with pytest.raises(TaskError) as caught:
        load_task_dir(tmp_path)
    assert caught.value.field == "train.mounts.evil"
    assert "under /data/" in str(caught.value)


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_site_dir_mount_is_refused_with_the_other_layers_off(
        executor: SandboxBackend, escape: Escape, monkeypatch: pytest.MonkeyPatch,
        runtime: str) -> None:
    layers = Layers(monkeypatch)
    layers.site_processing()
    layers.dac_read_search()
    layers.docker_seccomp()
    with pytest.raises(SpecError) as caught:
        attack(executor, escape, runtime, mount=DataMount)
    assert caught.value.field == "data_mounts[0].target"


# The sensitivity twin of every layer: all four off, the attack works.

@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_escape_works_with_every_layer_off(executor: SandboxBackend, escape: Escape,
                                           monkeypatch: pytest.MonkeyPatch,
                                           runtime: str) -> None:
    layers = Layers(monkeypatch)
    layers.site_processing()
    layers.dac_read_search()
    layers.docker_seccomp()
    result = attack(executor, escape, runtime)
    report = runner_report(result)
    assert report is not None, result
    assert report["uid"] == 0 and report["cap_eff"] & DAC, report
    if runtime == "runc":  # the host's file, read from inside the container
        assert report.get("host_file") == escape.canary.secret, report
    else:  # gVisor implements no file handles: root in PID 1 is as far as it gets
        assert report["open_by_handle_at"] == -errno.EOPNOTSUPP, report


# The runner's interpreter: -I -S, no site processing.

@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_runner_runs_no_site_hook_with_the_other_layers_off(
        executor: SandboxBackend, escape: Escape, monkeypatch: pytest.MonkeyPatch,
        runtime: str) -> None:
    layers = Layers(monkeypatch)
    layers.dac_read_search()
    layers.docker_seccomp()
    result = attack(executor, escape, runtime)
    assert result.status is Status.OK, result
    assert runner_report(result) is None, result
    # The job's own Python still sees the folder: it is the job's code, as the job's uid.
    assert all(r["uid"] == 10001 and r["cap_eff"] == 0 for r in reports(result)), result


# The runner's capabilities: never DAC_READ_SEARCH.

@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_runner_holds_no_dac_read_search_with_the_other_layers_off(
        executor: SandboxBackend, escape: Escape, monkeypatch: pytest.MonkeyPatch,
        runtime: str) -> None:
    layers = Layers(monkeypatch)
    layers.site_processing()
    layers.docker_seccomp()
    result = attack(executor, escape, runtime)
    report = runner_report(result)
    assert report is not None, result  # the payload ran in PID 1 as root ...
    assert report["uid"] == 0
    assert not report["cap_eff"] & DAC, report  # ... without the capability
    assert report["open_by_handle_at"] < 0 and "host_file" not in report, report


# The sandbox's own seccomp profile: no file handles, whatever the capabilities.

@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_seccomp_refuses_file_handles_with_the_other_layers_off(
        executor: SandboxBackend, escape: Escape, monkeypatch: pytest.MonkeyPatch,
        runtime: str) -> None:
    layers = Layers(monkeypatch)
    layers.site_processing()
    layers.dac_read_search()
    result = attack(executor, escape, runtime)
    report = runner_report(result)
    assert report is not None and report["cap_eff"] & DAC, result
    assert report["open_by_handle_at"] == -errno.EPERM, report
    assert "host_file" not in report


# Calls neither a job nor the runner needs, refused by the profile (and the twin: under
# Docker's default profile io_uring and, under runc, ptrace go through).
FORBIDDEN_CALLS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    r = libc.syscall(number, *args)
    return r if r >= 0 else -ctypes.get_errno()
handle = ctypes.create_string_buffer(128)
ctypes.memmove(handle, (120).to_bytes(4, "little"), 4)
mount_id = ctypes.c_int()
out = {
    "ptrace_traceme": call(101, 0, 0, 0, 0),
    "name_to_handle_at": call(303, -100, b"/job/work", handle, ctypes.byref(mount_id), 0),
    "keyctl": call(250, 0, 0, 0, 0),
    "userfaultfd": call(323, 0),
    "io_uring_setup": call(425, 1, ctypes.create_string_buffer(120)),
    "unshare_user": call(272, 0x10000000),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "mount": call(165, b"none", b"/tmp", b"tmpfs", 0, 0),
    "socket_alg": call(41, 38, 5, 0),
    "socket_packet": call(41, 17, 3, 0),
    "socket_netlink_uevent": call(41, 16, 3, 15),
}
print(json.dumps(out))
"""


def forbidden_calls(executor: SandboxBackend, runtime: str) -> dict[str, int]:
    result = executor.run_job(JobSpec(files={"main.py": FORBIDDEN_CALLS.encode()},
                                  command=("python3", "main.py"), runtime=runtime))
    assert result.status is Status.OK, result
    return proc_status(result)


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_seccomp_refuses_calls_no_job_needs(executor: SandboxBackend,
                                                runtime: str) -> None:
    out = forbidden_calls(executor, runtime)
    assert out == dict.fromkeys(out, -errno.EPERM), out


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_io_uring_and_ptrace_work_under_dockers_default_profile(
        executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch, runtime: str) -> None:
    Layers(monkeypatch).docker_seccomp()
    out = forbidden_calls(executor, runtime)
    assert out["io_uring_setup"] >= 0, out  # an io_uring instance: a large kernel surface
    if runtime == "runc":  # gVisor refuses PTRACE_TRACEME itself
        assert out["ptrace_traceme"] == 0, out


# After start-up the runner keeps only KILL and SETUID.

@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_runner_capabilities_beyond_kill_and_setuid_after_start(
        executor: SandboxBackend, runtime: str) -> None:
    result = executor.run_job(JobSpec(files={"main.py": READ_RUNNER_CAPS.encode()},
                                  command=("python3", "main.py"), runtime=runtime))
    caps = proc_status(result)
    kept = mask("KILL", "SETUID")
    assert caps == {"CapEff": kept, "CapPrm": kept, "CapBnd": kept}, caps


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runner_keeps_its_start_up_capabilities_without_the_drop(
        docker_client: docker.DockerClient, sandbox_image: str, runtime: str) -> None:
    image = runner_image_without_cap_drop(docker_client, sandbox_image)
    from controller.sandbox.backend_config import ExecutorConfig

    ex = DockerExecutor(ExecutorConfig(image=image, slots=1, namespace="pytest",
                                        runtime="runc"))
    try:
        result = ex.run_job(JobSpec(files={"main.py": READ_RUNNER_CAPS.encode()},
                                command=("python3", "main.py"), runtime=runtime))
    finally:
        ex.close()
    caps = proc_status(result)
    assert caps["CapEff"] == mask("CHOWN", "KILL", "SETGID", "SETUID", "SETPCAP"), caps
