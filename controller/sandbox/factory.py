"""The one place a sandbox backend is chosen and built (backend.py's protocol).

A new backend adds its settings to BackendConfig (backend_config.py) and one branch
here; nothing above the sandbox layer changes.
"""

from __future__ import annotations

from controller.quotas import Quotas
from controller.sandbox.backend import RunObjects, SandboxBackend
from controller.sandbox.backend_config import BackendConfig, ExecutorConfig


def make_backend(config: ExecutorConfig, backend: BackendConfig | None = None,
                 quotas: Quotas | None = None) -> SandboxBackend:
    """The configured backend, connected; raises SandboxUnavailable when its engine (or
    cluster, or the sandbox image) is not usable. Its start-up reaps the namespace's
    orphans."""
    backend = backend or BackendConfig()
    backend.validate()
    if backend.kind == "ray":
        from controller.sandbox.ray_backend import RayExecutor  # ray is an optional extra

        assert backend.ray is not None  # validate() checked it
        return RayExecutor(config, backend.ray, quotas)
    from controller.sandbox.executor import DockerExecutor

    return DockerExecutor(config, quotas)


def run_objects(config: ExecutorConfig) -> RunObjects:
    """The objects runs claimed in `config`'s namespace, for a clean-up without a
    running backend (`bilevel delete` on a state dir no controller holds). Every
    backend here keeps them on the controller's Docker engine."""
    from controller.sandbox.docker_engine import DockerEngine
    from controller.sandbox.docker_objects import DockerObjects

    return DockerObjects(DockerEngine.connect(config.docker_url), config.namespace)
