"""A Docker backend whose every job runs in a pooled container: before each job one
container of its class is made and waiting (prewarm), and the job's timings must say it
ran warm. The deny tests run on it too (conftest.py), so the pooled path is shown to
hold the same line as a cold start."""

from __future__ import annotations

from typing import Any

from controller.sandbox.executor import DockerExecutor
from controller.sandbox.spec import JobResult, JobSpec


class Prewarmed:
    def __init__(self, inner: DockerExecutor) -> None:
        self.inner = inner

    def run_job(self, spec: JobSpec, **kwargs: Any) -> JobResult:
        gpu = bool(spec.gpu_ids) or bool(self.inner.config.gpu_slots)
        assert gpu or self.inner.prewarm(spec), "the pool did not take a container"
        result = self.inner.run_job(spec, **kwargs)
        assert gpu or result.timings.warm, f"the job did not run warm: {result}"
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
