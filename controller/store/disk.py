"""The state dir's disk budget: what it uses, and a check before it grows.

Use is measured as `du` does: allocated blocks, each file once however many hard links
it has (stored task copies are shared between runs, see task_bundle.py). The budget is
`server.state_dir_max_bytes`, by default a quarter of the file system that holds the
state dir: room for the Docker engine's images and volumes, which often live on the
same disk and copy each task's data once more.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controller.research.errors import CapacityError

BUDGET_KEY = "server.state_dir_max_bytes"
DEFAULT_FRACTION = 0.25  # of the file system's size, when the key is not set


def usage_bytes(root: Path) -> int:
    """Bytes the files and folders under `root` take, each inode counted once."""
    return usage_of((root,))


def usage_of(roots: Iterable[Path]) -> int:
    """Bytes the files and folders under all of `roots` take, each inode counted once
    (a task copy that two of the roots link to counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for folder, dirs, names in os.walk(root):
            for name in (*dirs, *names):
                try:
                    st = os.lstat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue  # removed while we walked
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def default_budget(state_dir: Path) -> int:
    """DEFAULT_FRACTION of the size of the file system that holds `state_dir`."""
    probe = state_dir
    while not probe.exists():
        probe = probe.parent
    return int(shutil.disk_usage(probe).total * DEFAULT_FRACTION)


@dataclass(frozen=True)
class DiskBudget:
    state_dir: Path
    max_bytes: int

    @classmethod
    def of(cls, state_dir: Path, max_bytes: int | None) -> DiskBudget:
        """The configured budget, or the default one when `max_bytes` is None."""
        return cls(state_dir, default_budget(state_dir) if max_bytes is None else max_bytes)

    def used(self) -> int:
        return usage_bytes(self.state_dir)

    def check(self, adding: int) -> None:
        """CapacityError (RESOURCE_EXHAUSTED, subject the key) when the state dir's use
        plus `adding` bytes would exceed the budget."""
        used = self.used()
        if used + adding <= self.max_bytes:
            return
        what = f" and this request adds {adding}" if adding else ""
        raise CapacityError(BUDGET_KEY, (
            f"the state dir's disk budget ({BUDGET_KEY}) is {self.max_bytes} bytes; "
            f"{self.state_dir} uses {used}{what}: delete finished runs (`bilevel delete "
            f"RUN`, or the retention.* settings) or raise {BUDGET_KEY}"))
