"""A connection to one Docker engine, for the Docker backend's modules only.

The pooled client serves ordinary calls. A hijacked attach connection (a job's output
stream, a session's stdio) must never go back to the shared pool, so each gets a client
of its own (`dedicated`), closed when its job or session ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions

from controller.sandbox.backend_config import SandboxUnavailable

# What a call to an engine that is down, gone or refusing raises.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


@contextlib.contextmanager
def engine_calls() -> Iterator[None]:
    """Engine failures inside, raised as SandboxUnavailable: no Docker error crosses the
    backend's seam."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise SandboxUnavailable(f"the Docker engine failed: {exc}") from exc


@dataclass(frozen=True)
class DockerEngine:
    client: docker.DockerClient
    kwargs: dict[str, Any]  # how to reach the engine again (base_url, tls)

    @classmethod
    def connect(cls, url: str | None = None, timeout: int = 60) -> DockerEngine:
        """The engine at `url` (default: from the environment), pinged; raises
        SandboxUnavailable when it does not answer."""
        kwargs: dict[str, Any] = {"base_url": url} if url else docker.utils.kwargs_from_env()
        try:
            client = docker.DockerClient(**kwargs, timeout=timeout)
            client.ping()
        except ENGINE_ERRORS as exc:
            raise SandboxUnavailable(
                f"cannot reach the Docker engine ({exc}); start it (see README#docker) — "
                "bilevel never runs jobs on the host") from exc
        return cls(client, kwargs)

    def dedicated(self) -> docker.APIClient:
        """A low-level client of its own, without a read timeout, for one attach stream."""
        return docker.APIClient(**self.kwargs, timeout=None)

    def close(self) -> None:
        self.client.close()
