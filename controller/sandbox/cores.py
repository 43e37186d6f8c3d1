"""The host's cores, and a gate that admits time-budgeted jobs only while their cores are free.

A time-budgeted training job measures its host as much as its code: two such jobs on
the same cores each get fewer steps, their start-up and export stretch towards the
training bound, and an evaluation next to them can miss its time limit. So the trainer's
phases (research/tasks/trainer_run.py) hold their `cpus` of this host's cores while they
run, and wait, first come first served, while the cores are taken. Other jobs (mechanism sessions,
ad-hoc jobs) do not take part: only work whose result depends on time does.

The count is the smallest of what this process may run on (its CPU affinity and its
cgroup's CPU quota) and what the Docker engine reports: a bound a controller in a small
container keeps even when its engine has more. One gate serves the whole process, so
every run and executor of one controller shares it; a second controller on the same host
does not see it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

POLL_SECONDS = 0.5  # how often a waiting job looks at its cancel event
CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cores(cpu_max: str | None = None, v1_quota: str | None = None,
                v1_period: str | None = None) -> float | None:
    """The CPU quota in cores from cgroup v2's `cpu.max` ("200000 100000", or "max
    100000" for none) or cgroup v1's quota and period; None when there is no quota."""
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max" and int(parts[1]) > 0:
            return int(parts[0]) / int(parts[1])
        return None
    if v1_quota is not None and v1_period is not None:
        quota, period = int(v1_quota), int(v1_period)
        return quota / period if quota > 0 and period > 0 else None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def host_cores(engine_cpus: int | None = None) -> float:
    """Cores this controller's jobs may count on (see the module's doc); at least 1."""
    counts: list[float] = [float(len(os.sched_getaffinity(0)))]
    quota = quota_cores(_read(CGROUP_V2_MAX), _read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD))
    if quota is not None:
        counts.append(quota)
    if engine_cpus:
        counts.append(float(engine_cpus))
    return max(1.0, min(counts))


class CoreGate:
    """At most `cores` cores held at once, handed out in arrival order. A job asking for
    more than the host has takes all of it and runs alone."""

    def __init__(self, cores: float) -> None:
        if not cores > 0:
            raise ValueError(f"a host has at least one core, got {cores!r}")
        self.cores = float(cores)
        self._free = self.cores
        self._queue: list[object] = []
        self._cond = threading.Condition()

    def share(self, cpus: float) -> float:
        """What a job asking `cpus` holds: its cpus, or the whole host if it asks more."""
        return min(float(cpus), self.cores)

    def at_once(self, cpus: float) -> int:
        """How many jobs asking `cpus` each can run at the same time."""
        return max(1, math.floor(self.cores / self.share(cpus) + 1e-9))

    def plan(self, jobs: int, cpus: float) -> str:
        """What a run that wants `jobs` of them at once gets, as one sentence; "" when
        the host has the cores for all of them."""
        running = self.at_once(cpus)
        if jobs <= running:
            return ""
        return (f"{jobs} trials asked to run at once; this host has {self.cores:g} cores and "
                f"each takes {self.share(cpus):g}: running {running} at a time")

    @contextlib.contextmanager
    def hold(self, cpus: float, cancel: threading.Event | None = None) -> Iterator[bool]:
        """Hold `cpus` cores for the body; yields False (holding nothing) when `cancel`
        was set while waiting for them."""
        need, ticket, got = self.share(cpus), object(), False
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (cancel is not None and cancel.is_set()):
                    if self._queue[0] is ticket and self._free + 1e-9 >= need:
                        self._free -= need
                        got = True
                        break
                    self._cond.wait(POLL_SECONDS)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._free += need
                    self._cond.notify_all()

    @property
    def free(self) -> float:
        """Cores not held now."""
        with self._cond:
            return self._free

    @property
    def waiting(self) -> int:
        """Jobs waiting for cores now."""
        with self._cond:
            return len(self._queue)


@functools.cache
def shared_gate(cores: float) -> CoreGate:
    """The process's gate for a host of `cores` cores (one per count, so one per host)."""
    return CoreGate(cores)
