"""Shared fixtures: a real Docker engine and the sandbox image built from this checkout.

Tests marked `docker` fail loudly (not skip) when the engine is missing, unless
BILEVEL_SKIP_DOCKER=1 is set for a quick unit-only run: a silent skip would let CI pass
without ever running a container.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterator

import docker
import pytest

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import ExecutorConfig, PoolConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.image import ImageRecipe, ensure_image
from tests.prewarmed import Prewarmed

RUNTIMES = ("runc", "runsc")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("BILEVEL_SKIP_DOCKER") != "1":
        return
    skip = pytest.mark.skip(reason="BILEVEL_SKIP_DOCKER=1")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env(timeout=120)
    client.ping()
    return client


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    """The image for this checkout; built here if `.ci/run` did not build it already."""
    return ensure_image(docker_client, ImageRecipe(base=os.environ.get("BILEVEL_BASE", "auto")))


@pytest.fixture(scope="session")
def default_executor(sandbox_image: str) -> Iterator[SandboxBackend]:
    """The backend as ExecutorConfig makes it: no warm pool (tests count containers)."""
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=2, namespace="pytest",
                                        runtime="runc"))
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def cold_executor(sandbox_image: str) -> Iterator[SandboxBackend]:
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=2, namespace="pytest-cold",
                                        runtime="runc", pool=PoolConfig(size=0)))
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def warm_executor(sandbox_image: str) -> Iterator[SandboxBackend]:
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=2, namespace="pytest-warm",
                                        runtime="runc", pool=PoolConfig(size=1)))
    yield Prewarmed(ex)
    ex.close()


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> SandboxBackend:
    """The session's backend; a test_deny_* runs twice, in a cold container and in a
    pooled one (each of its jobs prewarmed, and checked to have run warm)."""
    start = getattr(request, "param", "default")
    backend: SandboxBackend = request.getfixturevalue(f"{start}_executor")
    return backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__.startswith("test_deny_") and \
            "executor" in metafunc.fixturenames:
        metafunc.parametrize("executor", ["cold", "warm"], indirect=True)


@pytest.fixture(scope="session")
def setuid_image(docker_client: docker.DockerClient, sandbox_image: str) -> str:
    """The sandbox image plus a setuid-root copy of `id`: bait for escalation tests."""
    import io

    tag = f"bilevel-test-setuid:{sandbox_image.split(':')[1]}"
    dockerfile = (f"FROM {sandbox_image}\nUSER root\n"
                  "RUN cp /usr/bin/id /usr/local/bin/suid-id && chmod 4755 /usr/local/bin/suid-id\n"
                  "USER 10001:10001\n")
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                               network_mode="none")
    return tag


@pytest.fixture(scope="session")
def setuid_executor(sandbox_image: str, setuid_image: str) -> Iterator[SandboxBackend]:
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=1, namespace="pytest",
                                        runtime="runc", allowed_images=(setuid_image,)))
    yield ex
    ex.close()


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP listener on every local address; records whether anyone connected."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="session")
def bridge_gateway(docker_client: docker.DockerClient) -> str:
    """The Docker bridge's address on this machine (a local listener target)."""
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if "Gateway" in config:
        return str(config["Gateway"])
    subnet = ipaddress.ip_network(config["Subnet"])
    return str(next(subnet.hosts()))  # the engine gives the bridge the first address
