"""The most a job may be given on this server: LimitCaps, set in the server config
(sandbox.max_<limit>) with defaults derived from the host.

Limits.validate bounds what any job could sensibly ask for (typos, abuse); these caps
bound what this server is willing to give to a request that arrives over the API (an
Execute call's limits, a task manifest sent with CreateRun). A value over its cap is
refused, naming the field, the cap and the setting that raises it, never clipped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

from controller.sandbox.spec import Limits, SpecError

MEMORY_FRACTION = 0.5  # of physical memory, for one job
WALL_SECONDS = 6 * 3600.0
PIDS = 1024
DISK_BYTES = 16 << 30
OUTPUT_BYTES = 64 << 20
# Returned files travel back in one response (controller/api/edge.py MAX_SEND_BYTES).
RETURNED_FILE_BYTES = 256 << 20


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_cpus() -> float:
    """The cores this process may run on (its affinity mask, e.g. a cpuset)."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return float(os.cpu_count() or 1)


def _memory_cap() -> int:
    return int(host_memory_bytes() * MEMORY_FRACTION) >> 20 << 20  # whole MiB


@dataclass(frozen=True)
class LimitCaps:
    """Caps on each Limits field of a requested job; config keys sandbox.max_<name>."""

    memory_bytes: int = field(default_factory=_memory_cap)
    cpus: float = field(default_factory=host_cpus)
    wall_seconds: float = WALL_SECONDS
    pids: int = PIDS
    disk_bytes: int = DISK_BYTES
    # tmpfs counts as memory: a job's tmp_bytes is also at most its memory_bytes
    tmp_bytes: int = field(default_factory=_memory_cap)
    output_bytes: int = OUTPUT_BYTES
    returned_file_bytes: int = RETURNED_FILE_BYTES

    @staticmethod
    def key(name: str) -> str:
        return f"sandbox.max_{name}"

    def validate(self) -> None:
        """The caps must themselves be valid limits (Limits.validate's bounds)."""
        try:
            Limits(**{**asdict(self), "tmp_bytes": min(self.tmp_bytes, self.memory_bytes)}
                   ).validate()
        except SpecError as exc:
            name = exc.field.removeprefix("limits.")
            raise SpecError(self.key(name), exc.reason.replace("limits.", "sandbox.max_")) \
                from None

    def check(self, limits: Limits, prefix: str = "limits") -> None:
        """SpecError naming `prefix.<field>` and its cap for the first field over it."""
        for f in fields(self):
            value, cap = getattr(limits, f.name), getattr(self, f.name)
            if value > cap:
                raise SpecError(f"{prefix}.{f.name}", over_cap(value, cap, self.key(f.name)))


def over_cap(value: float, cap: float, key: str, unit: str = "") -> str:
    return (f"{_number(value)}{unit} is over this server's cap of {_number(cap)}{unit} "
            f"({key})")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
