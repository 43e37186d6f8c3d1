"""Ray backend settings and result checks that need no cluster: bad input gets a clear
error naming the setting, and a node's result that breaks the job's caps is refused."""

from __future__ import annotations

import argparse

import pytest

from controller.commands.controller_flags import server_config
from controller.config import ConfigError
from controller.errors import FieldError
from controller.sandbox.backend_config import (
    BACKEND_KEY,
    RAY_ADDRESS_KEY,
    BackendConfig,
    RayConfig,
)
from controller.sandbox.ray_backend import _checked
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status


def test_backend_settings_are_checked_and_name_the_setting() -> None:
    assert BackendConfig.of(None, None) == BackendConfig("docker")
    assert BackendConfig.of("ray", "10.0.0.5:6379") == BackendConfig(
        "ray", RayConfig(address="10.0.0.5:6379"))
    BackendConfig.of("ray", "10.0.0.5:6379").validate()
    for kind, address, named in (("ray", None, RAY_ADDRESS_KEY),
                                 ("ray", "head", RAY_ADDRESS_KEY),
                                 ("ray", "head:99999", RAY_ADDRESS_KEY),
                                 ("docker", "head:6379", RAY_ADDRESS_KEY),
                                 ("k8s", None, BACKEND_KEY)):
        with pytest.raises(FieldError) as info:
            BackendConfig.of(kind, address).validate()
        assert info.value.field == named, (kind, address)


@pytest.mark.parametrize(("config", "named"), [
    (RayConfig(address="h:1", max_attempts=0), "max_attempts"),
    (RayConfig(address="h:1", gpus_per_slot=-1), "gpus_per_slot"),
    (RayConfig(address="h:1", slot_resource="a b"), "slot_resource"),
])
def test_ray_config_refuses_bad_values(config: RayConfig, named: str) -> None:
    with pytest.raises(FieldError) as info:
        config.validate()
    assert info.value.field.endswith(named)


def test_serve_flags_reach_the_config(tmp_path: object) -> None:
    args = argparse.Namespace(backend="ray", ray_address="127.0.0.1:6379",
                              state_dir=tmp_path)
    assert server_config(args).backend == BackendConfig(
        "ray", RayConfig(address="127.0.0.1:6379"))
    with pytest.raises(ConfigError, match=r"--backend ray\) needs HOST:PORT") as info:
        server_config(argparse.Namespace(backend="ray", state_dir=tmp_path))
    assert info.value.field == RAY_ADDRESS_KEY


def test_the_config_file_chooses_the_backend(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "bilevel.toml"
    path.write_text('[sandbox]\nbackend = "ray"\nray_address = "head:6379"\n')
    monkeypatch.setenv("BILEVEL_CONFIG", str(path))
    args = argparse.Namespace(state_dir=tmp_path)
    assert server_config(args).backend == BackendConfig("ray", RayConfig(address="head:6379"))


def test_a_node_result_over_the_caps_is_refused() -> None:
    spec = JobSpec(files={}, command=("true",), limits=Limits(returned_file_bytes=10))
    ok = JobResult(status=Status.OK, exit_code=0, files={"a": b"12345"})
    assert _checked(ok, spec) is ok
    for bad in (JobResult(status=Status.OK, exit_code=0, files={"a": b"x" * 11}),
                JobResult(status=Status.OK, exit_code=0, stdout_tail="x" * (1 << 20)),
                {"status": "ok"}):
        result = _checked(bad, spec)
        assert result.status is Status.SANDBOX_ERROR and "Ray node" in result.detail
