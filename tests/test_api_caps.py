"""A requested job gets at most what the server is configured to give (issue 19, part
5): Execute limits and a sent task's phases over the caps (sandbox.max_*) are
INVALID_ARGUMENT naming the field and the cap; a job's environment is an allow-list.

The API tests need no engine: a request that passes every check reaches the engine and
is UNAVAILABLE, which is how the twins show it was accepted."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.config import ConfigError
from controller.config_file import load
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.caps import LimitCaps
from controller.sandbox.spec import JobSpec, Limits, SpecError
from controller.store.task_bundle import read_task_dir
from tests.test_api_harness import Stubs, field_violations, serving
from tests.test_task_api import MANIFEST, task_request, write_task

NO_DOCKER = "unix:///nonexistent/docker.sock"
CAPS = LimitCaps(memory_bytes=4 << 30, cpus=2.0, wall_seconds=3600.0, pids=512,
                 disk_bytes=8 << 30, tmp_bytes=1 << 30, output_bytes=16 << 20,
                 returned_file_bytes=128 << 20)
WIDE = LimitCaps(memory_bytes=512 << 30, cpus=256.0, wall_seconds=86400.0, pids=65536,
                 disk_bytes=1 << 40, tmp_bytes=512 << 30, output_bytes=1 << 30,
                 returned_file_bytes=4 << 30)  # Limits.validate's own bounds
# What the client asked for, one limit at a time.
OVER = {"memory_bytes": 512 << 30, "cpus": 256.0, "wall_seconds": 86400.0,
        "disk_bytes": 1 << 40, "returned_file_bytes": 4 << 30, "pids": 65536,
        "output_bytes": 1 << 30, "tmp_bytes": 2 << 30}


def execute(stubs: Stubs, **fields: object) -> grpc.RpcError:
    request = spb.ExecuteRequest(files={"main.py": b"print(1)"}, command=["python3", "main.py"],
                                 **fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        list(stubs.sandbox.Execute(request, timeout=60))
    return info.value


def test_deny_execute_limits_over_the_servers_caps(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, caps=CAPS) as server:
        stubs = Stubs(server.address)
        for name, value in OVER.items():
            limits = spb.Limits(**{name: value})  # type: ignore[arg-type]
            if name == "tmp_bytes":
                limits.memory_bytes = 4 << 30
            error = execute(stubs, limits=limits)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            why = field_violations(error)[f"limits.{name}"]
            cap = getattr(CAPS, name)
            assert why == (f"{int(value)} is over this server's cap of {int(cap)} "
                           f"(sandbox.max_{name})"), why
        # At the caps, the request is accepted (and reaches the engine, here down).
        at_caps = spb.Limits(memory_bytes=4 << 30, cpus=2.0, wall_seconds=3600,
                             disk_bytes=8 << 30)
        assert execute(stubs, limits=at_caps).code() == grpc.StatusCode.UNAVAILABLE


def test_sensitivity_with_caps_as_wide_as_limits_allow_the_requests_are_accepted(
        tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, caps=WIDE) as server:
        stubs = Stubs(server.address)
        for name, value in OVER.items():
            limits = spb.Limits(**{name: value})  # type: ignore[arg-type]
            if name == "tmp_bytes":
                limits.memory_bytes = 4 << 30
            assert execute(stubs, limits=limits).code() == grpc.StatusCode.UNAVAILABLE, name


def _task_over_caps(tmp_path: Path) -> dict[str, bytes]:
    files = read_task_dir(write_task(tmp_path / "task"))
    manifest = MANIFEST.replace("wall_seconds = 60\noutputs", "wall_seconds = 60\n"
                                "memory_mb = 8192\noutputs")
    assert manifest != MANIFEST
    return {**files, "bilevel-task.toml": manifest.encode()}


def test_deny_a_sent_tasks_phases_over_the_servers_caps(tmp_path: Path) -> None:
    files = _task_over_caps(tmp_path)
    with serving(tmp_path / "state", None, docker_url=NO_DOCKER, caps=CAPS) as server:
        stubs = Stubs(server.address)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(task_request(files), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        why = field_violations(info.value)["task.task_files[bilevel-task.toml].train.memory_mb"]
        assert why == "8192 MiB is over this server's cap of 4096 MiB (sandbox.max_memory_bytes)"
        slow = {**files, "bilevel-task.toml": MANIFEST.replace(
            'wall_seconds = 60\n\n[knobs]', 'wall_seconds = 7200\ncpus = 4\n\n[knobs]').encode()}
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(task_request(slow), timeout=60)
        assert "task.task_files[bilevel-task.toml].score.cpus" in field_violations(info.value)


def test_sensitivity_with_wide_caps_the_same_task_is_accepted(tmp_path: Path) -> None:
    files = _task_over_caps(tmp_path)
    with serving(tmp_path / "state", None, docker_url=NO_DOCKER, caps=WIDE) as server, \
            pytest.raises(grpc.RpcError) as info:
        Stubs(server.address).runs.CreateRun(task_request(files), timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # checked, stored, then the engine


# The caps in the server config.


def test_caps_default_to_the_host_and_load_from_the_config(tmp_path: Path) -> None:
    env = {"BILEVEL_STATE_DIR": str(tmp_path)}
    config = load(None, env, {})
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory // 2 - (1 << 20) <= config.caps.memory_bytes <= memory // 2
    assert config.caps.cpus == len(os.sched_getaffinity(0))
    assert config.max_streams == 128 and config.max_streams_per_client == 32
    path = tmp_path / "bilevel.toml"
    path.write_text('[sandbox]\nmax_memory_bytes = "2GiB"\nmax_cpus = 1.5\n'
                    '[server]\nmax_streams = 64\nmax_request_bytes_in_flight = "512MiB"\n')
    config = load(path, {**env, "BILEVEL_SANDBOX__MAX_WALL_SECONDS": "600"}, {})
    assert (config.caps.memory_bytes, config.caps.cpus, config.caps.wall_seconds) == \
        (2 << 30, 1.5, 600.0)
    assert config.max_streams == 64 and config.max_request_bytes_in_flight == 512 << 20


@pytest.mark.parametrize(("env", "message"), [
    ({"BILEVEL_SANDBOX__MAX_MEMORY_BYTES": "512MiB"},
     "limits.memory_bytes: the default 1073741824 is over this server's cap of 536870912 "
     "(sandbox.max_memory_bytes): lower it in [limits] or raise the cap"),
    ({"BILEVEL_SANDBOX__MAX_PIDS": "4"},
     "sandbox.max_pids (from BILEVEL_SANDBOX__MAX_PIDS): must be between 8 and 65536"),
    ({"BILEVEL_SERVER__MAX_REQUEST_BYTES_IN_FLIGHT": "100MiB"},
     "server.max_request_bytes_in_flight (from BILEVEL_SERVER__MAX_REQUEST_BYTES_IN_FLIGHT): "
     "104857600: must be at least"),
    ({"BILEVEL_SERVER__MAX_STREAMS": "0"}, "server.max_streams"),
])
def test_deny_caps_that_contradict_the_defaults_or_the_bounds(
        tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"BILEVEL_STATE_DIR": str(tmp_path), **env}, {})
    assert message in str(info.value)


# A job's environment: an allow-list, at the API and in the sandbox layer.


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH",
                                  "PYTHONSTARTUP", "PATH", "HOME", "BILEVEL_METRICS",
                                  "CUDA_VISIBLE_DEVICES", "http_proxy", "task_x",
                                  "TASK_X-Y"])
def test_deny_job_env_names_outside_the_allow_list(name: str) -> None:
    with pytest.raises(SpecError) as info:
        JobSpec(files={}, command=("true",), env={name: "x"}).validate()
    assert info.value.field == f"env[{name!r}]"
    assert "is not a variable a job may set" in info.value.reason


def test_allow_thread_counts_trial_and_task_settings_with_small_values() -> None:
    env = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TRIAL_SEED": "7",
           "TASK_DATASET": "spirals", "TASK_lr": "0.1"}
    JobSpec(files={}, command=("true",), env=env).validate()
    for value in ("x" * 4097, "a\0b"):
        with pytest.raises(SpecError, match="at most 4096 bytes"):
            JobSpec(files={}, command=("true",), env={"TASK_X": value}).validate()
    with pytest.raises(SpecError, match="at most 64"):
        JobSpec(files={}, command=("true",), env={f"TASK_{i}": "" for i in range(65)}).validate()


def test_deny_execute_env_outside_the_allow_list_names_the_field(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
        stubs = Stubs(server.address)
        error = execute(stubs, env={"LD_PRELOAD": "/job/work/evil.so"})
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a variable a job may set" in field_violations(error)["env['LD_PRELOAD']"]
        assert execute(stubs, env={"OMP_NUM_THREADS": "1"}).code() == \
            grpc.StatusCode.UNAVAILABLE


class EnvUnchecked(JobSpec):
    """A JobSpec with the environment allow-list weakened away (everything else checked)."""

    def validate(self) -> None:
        JobSpec.validate(replace(self, env={}))


PROBE = ("import os, sys\nprint('preload', os.environ.get('LD_PRELOAD'))\n"
         "print('shadow', '/job/work/shadow' in sys.path)\n")
ATTACK_ENV = {"LD_PRELOAD": "/job/work/evil.so", "PYTHONPATH": "/job/work/shadow"}


@pytest.mark.docker
def test_deny_the_executor_refuses_a_loader_environment(executor: SandboxBackend) -> None:
    spec = JobSpec(files={"main.py": PROBE.encode()}, command=("python3", "main.py"),
                   env=ATTACK_ENV, limits=Limits(wall_seconds=30))
    with pytest.raises(SpecError) as info:
        executor.run_job(spec)
    assert info.value.field.startswith("env[")


@pytest.mark.docker
def test_sensitivity_without_the_allow_list_the_loader_environment_reaches_the_job(
        executor: SandboxBackend) -> None:
    spec = EnvUnchecked(files={"main.py": PROBE.encode()}, command=("python3", "main.py"),
                        env=ATTACK_ENV, limits=Limits(wall_seconds=30))
    result = executor.run_job(spec)
    assert "preload /job/work/evil.so" in result.stdout, result
    assert "shadow True" in result.stdout, result
