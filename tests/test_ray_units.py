"""Ray backend settings and result checks that need no cluster: bad input gets a clear
error naming the setting, and a node's result that breaks the job's caps is refused."""

from __future__ import annotations

import argparse

import pytest

from controller.commands.serve import server_config
from controller.config import ConfigError
from controller.sandbox.ray_backend import RayConfig, RayConfigError, _checked, parse_backend
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status


def test_backend_flags_are_checked_and_name_the_flag() -> None:
    assert parse_backend("docker", None) is None
    assert parse_backend("ray", "10.0.0.5:6379") == RayConfig(address="10.0.0.5:6379")
    for backend, address, field in (("ray", None, "ray_address"),
                                    ("ray", "head", "ray_address"),
                                    ("ray", "head:99999", "ray_address"),
                                    ("docker", "head:6379", "ray_address"),
                                    ("k8s", None, "backend")):
        with pytest.raises(RayConfigError) as info:
            parse_backend(backend, address)
        assert info.value.field == field


@pytest.mark.parametrize(("config", "field"), [
    (RayConfig(address="h:1", max_attempts=0), "ray_max_attempts"),
    (RayConfig(address="h:1", gpus_per_slot=-1), "ray_cpus_per_slot"),
    (RayConfig(address="h:1", slot_resource="a b"), "ray_slot_resource"),
])
def test_ray_config_refuses_bad_values(config: RayConfig, field: str) -> None:
    with pytest.raises(RayConfigError) as info:
        config.validate()
    assert info.value.field == field


def test_serve_flags_reach_the_config(tmp_path: object) -> None:
    args = argparse.Namespace(backend="ray", ray_address="127.0.0.1:6379",
                              state_dir=tmp_path)
    assert server_config(args).ray == RayConfig(address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="--ray-address: --backend ray needs"):
        server_config(argparse.Namespace(backend="ray", state_dir=tmp_path))


def test_a_node_result_over_the_caps_is_refused() -> None:
    spec = JobSpec(files={}, command=("true",), limits=Limits(returned_file_bytes=10))
    ok = JobResult(status=Status.OK, exit_code=0, files={"a": b"12345"})
    assert _checked(ok, spec) is ok
    for bad in (JobResult(status=Status.OK, exit_code=0, files={"a": b"x" * 11}),
                JobResult(status=Status.OK, exit_code=0, stdout_tail="x" * (1 << 20)),
                {"status": "ok"}):
        result = _checked(bad, spec)
        assert result.status is Status.SANDBOX_ERROR and "Ray node" in result.detail
