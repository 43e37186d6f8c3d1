"""A sent task's phases against the server's caps (controller/sandbox/caps.py).

A task directory that arrives with CreateRun chooses its phases' memory, CPUs, wall time
and outputs in its manifest; none may exceed what the server gives any requested job.
The error names the manifest key, in the manifest's unit, and the setting that raises it.
"""

from __future__ import annotations

from controller.research.tasks.errors import TaskError
from controller.research.tasks.manifest import TaskManifest
from controller.sandbox.caps import LimitCaps, over_cap


def check_task_caps(task: TaskManifest, caps: LimitCaps) -> None:
    """TaskError naming `train.memory_mb` (or the like) for the first value over its cap."""
    mib = 1 << 20
    for where, phase in (("train", task.train), ("score", task.score)):
        if phase is None:
            continue
        asked: list[tuple[str, float, float, str, str]] = [
            ("memory_mb", phase.memory_mb, caps.memory_bytes // mib, "memory_bytes", " MiB"),
            ("cpus", phase.cpus, caps.cpus, "cpus", ""),
            ("wall_seconds", phase.wall_seconds, caps.wall_seconds, "wall_seconds", " s")]
        if where == "train":  # what phase 1 writes comes back as its returned files
            asked.append(("output_mb", phase.output_mb, caps.returned_file_bytes // mib,
                          "returned_file_bytes", " MiB"))
        for key, value, cap, cap_name, unit in asked:
            if value > cap:
                raise TaskError(f"{where}.{key}",
                                over_cap(value, cap, LimitCaps.key(cap_name), unit))
