"""One SandboxExecutor per controller, created on first use.

The server starts (and answers health checks) while the Docker engine is down; each use
retries the connection and raises SandboxUnavailable until the engine is back.
"""

from __future__ import annotations

import threading

from controller.quotas import Quotas
from controller.sandbox.backend_config import RayConfig
from controller.sandbox.executor import ExecutorConfig, SandboxExecutor


class LazyExecutor:
    """With `ray`, the executor is a RayExecutor: jobs run on the cluster's nodes, the
    controller's own engine keeps the mechanism sessions (ray_backend.py)."""

    def __init__(self, config: ExecutorConfig, ray: RayConfig | None = None,
                 quotas: Quotas | None = None) -> None:
        self.config = config
        self.ray = ray
        self.quotas = quotas or Quotas()  # the principals' slot quotas and weights
        self._executor: SandboxExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> SandboxExecutor:
        """The executor; raises SandboxUnavailable when the engine or image is missing."""
        with self._lock:
            if self._executor is None:
                # The constructor pings the engine and reaps this namespace's orphans.
                if self.ray is not None:
                    from controller.sandbox.ray_backend import RayExecutor

                    self._executor = RayExecutor(self.config, self.ray, self.quotas)
                else:
                    self._executor = SandboxExecutor(self.config, self.quotas)
            return self._executor

    @property
    def ready(self) -> bool:
        return self._executor is not None

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.close()
