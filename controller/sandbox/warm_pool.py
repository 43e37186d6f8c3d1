"""A warm pool of sandbox containers: created, started and waiting, one class per
container configuration, each used by exactly one job and then destroyed.

A container's configuration is fixed when it is created (image, runtime, limits, GPUs,
data mounts, labels), so a pooled container can only serve a job whose configuration is
the same: that is its class (docker_job.class_key: the container's whole configuration
but its name, volume and deadline). It waits in the runner, which has done what does
not depend on the job and polls for the job's files (sandbox_image/runner.py --pooled);
a job claims it, the controller places the files as it would before a cold start, and
the runner goes on exactly as a cold one. Same hardening (the same `container_kwargs`:
docker_job.make_warm), same ownership labels with a deadline that covers its idle time
and the job's wall time, so a dead controller's pool is reaped by its successor's sweep
(reaper.py). The pool never takes a job slot: it holds no job, only waiting runners.

Bounds: at most `size` idle containers per class, at most `memory_bytes` of memory limits
over all idle containers (a new one makes room by removing the least recently used
class's oldest), idle ones removed after `idle_seconds` (and the runner leaves
by itself a little later, if nobody removed it). An empty pool is no error: the job
starts cold, and its timings say which it got.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors
import structlog

from controller.sandbox.backend_config import PoolConfig
from controller.sandbox.docker_engine import ENGINE_ERRORS

log = structlog.get_logger(__name__)

LABEL_POOL = "io.bilevel.pool"  # "1" on a pooled container, waiting or claimed
POOLED_FLAG = "--pooled"  # the runner waits for its job (sandbox_image/runner.py)
RUNNER_IDLE_SLACK = 30.0  # the runner leaves this long after the pool would remove it


@dataclass
class Warm:
    """One waiting container and its volume, of one class, with its output stream,
    attached before it started (as a cold job's is), so nothing it printed is lost."""

    key: str
    name: str
    container: Any
    volume: Any
    memory_bytes: int
    created: float
    api: Any = None  # the stream's own engine client (DockerEngine.dedicated)
    output: Any = ()


class WarmPool:
    """Thread-safe. `claim` takes a waiting container of a class (or None); `refill`
    makes the class's pool whole again in the background."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._idle: OrderedDict[str, list[Warm]] = OrderedDict()  # class -> oldest first
        self._filling: dict[str, int] = {}  # class -> containers being made
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="warm-pool",
                                         daemon=True)
        if config.size > 0:
            self._sweeper.start()

    @property
    def enabled(self) -> bool:
        return self.config.size > 0

    def idle(self, key: str | None = None) -> int:
        """Waiting containers (of one class, or all)."""
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(v) for v in self._idle.values())

    def claim(self, key: str) -> Warm | None:
        """A waiting container of `key`, now the caller's alone; None if there is none."""
        with self._lock:
            waiting = self._idle.get(key)
            if not waiting:
                return None
            warm = waiting.pop()  # the newest: furthest from its idle limit
            if waiting:
                self._idle.move_to_end(key)  # recently used: the last to make room
            else:
                del self._idle[key]
            return warm

    def refill(self, key: str, make: Callable[[], Warm]) -> None:
        """Start making containers of `key` in the background until it has `size` waiting
        or made (within the memory budget)."""
        if not self.enabled:
            return
        with self._lock:
            missing = self.config.size - len(self._idle.get(key, ())) - self._filling.get(key, 0)
            if self._closed or missing <= 0:
                return
            self._filling[key] = self._filling.get(key, 0) + missing
        for _ in range(missing):
            threading.Thread(target=self._make_one, args=(key, make), daemon=True,
                             name="warm-pool-fill").start()

    def fill_now(self, key: str, make: Callable[[], Warm]) -> bool:
        """Make one container of `key` and wait for it (prewarming); False if the pool is
        off, over its budget or closed."""
        if not self.enabled:
            return False
        with self._lock:
            self._filling[key] = self._filling.get(key, 0) + 1
        return self._make_one(key, make)

    def _make_one(self, key: str, make: Callable[[], Warm]) -> bool:
        warm: Warm | None = None
        try:
            warm = make()
        except ENGINE_ERRORS as exc:
            log.warning("could not make a pooled container", error=str(exc))
        evicted: list[Warm] = []
        with self._lock:
            self._filling[key] -= 1
            if not self._filling[key]:
                del self._filling[key]
            keep = warm is not None and not self._closed and \
                warm.memory_bytes <= self.config.memory_bytes
            if keep and warm is not None:
                evicted = self._make_room(warm.memory_bytes)
                self._idle.setdefault(key, []).append(warm)
                self._idle.move_to_end(key)
        for old in evicted:
            destroy(old)
        if warm is not None and not keep:
            destroy(warm)
        return keep

    def _make_room(self, memory_bytes: int) -> list[Warm]:
        """Take waiting containers out, the least recently used class's oldest first,
        until `memory_bytes` more fits the budget (the caller destroys them)."""
        out = []
        while self._idle and self._memory() + memory_bytes > self.config.memory_bytes:
            key = next(iter(self._idle))
            out.append(self._idle[key].pop(0))
            if not self._idle[key]:
                del self._idle[key]
        return out

    def _memory(self) -> int:
        return sum(w.memory_bytes for v in self._idle.values() for w in v)

    def _sweep_forever(self) -> None:
        while not self._stop.wait(min(5.0, self.config.idle_seconds / 4)):
            self.remove_idle(older_than=self.config.idle_seconds)

    def remove_idle(self, older_than: float = 0.0) -> int:
        """Remove the waiting containers idle for `older_than` seconds (all: 0)."""
        now = time.monotonic()
        with self._lock:
            old = [w for v in self._idle.values() for w in v if now - w.created >= older_than]
            for key in list(self._idle):
                self._idle[key] = [w for w in self._idle[key] if w not in old]
                if not self._idle[key]:
                    del self._idle[key]
        for warm in old:
            destroy(warm)
        return len(old)

    def drop(self, which: Callable[[dict[str, Any]], bool]) -> int:
        """Remove the waiting containers of the classes `which` picks (it gets a class as
        a dict: image, mounts, ...), e.g. those mounting a volume about to be removed:
        a waiting container holds its mounts and its image in use."""
        with self._lock:
            keys = [k for k in self._idle if which(json.loads(k))]
            out = [w for k in keys for w in self._idle.pop(k)]
        for warm in out:
            destroy(warm)
        return len(out)

    def close(self) -> None:
        """Remove every waiting container; later fills are dropped."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self.remove_idle()


def destroy(warm: Warm) -> None:
    """Remove a pooled container and its volume; the reaper retries what fails."""
    if warm.api is not None:
        warm.api.close()
    for obj in (warm.container, warm.volume):
        try:
            obj.remove(force=True)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("could not remove a pooled container; the reaper will",
                        error=str(exc))
