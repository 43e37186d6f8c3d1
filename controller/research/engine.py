"""One sandbox backend per controller, created on first use.

The server starts (and answers health checks) while the Docker engine is down; each use
retries the connection and raises SandboxUnavailable until the engine is back.
"""

from __future__ import annotations

import threading

from controller.quotas import Quotas
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import BackendConfig, ExecutorConfig
from controller.sandbox.factory import make_backend


class LazyBackend:
    """The configured backend (controller/sandbox/factory.py), built on first use."""

    def __init__(self, config: ExecutorConfig, backend: BackendConfig | None = None,
                 quotas: Quotas | None = None) -> None:
        self.config = config
        self.backend = backend or BackendConfig()
        self.quotas = quotas or Quotas()  # the principals' slot quotas and weights
        self._backend: SandboxBackend | None = None
        self._lock = threading.Lock()

    def get(self) -> SandboxBackend:
        """The backend; raises SandboxUnavailable when the engine or image is missing."""
        with self._lock:
            if self._backend is None:
                # Building it connects to the engine and reaps this namespace's orphans.
                self._backend = make_backend(self.config, self.backend, self.quotas)
            return self._backend

    @property
    def ready(self) -> bool:
        return self._backend is not None

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
