"""A principal's quotas checked when a run is created or resumed: its runs active at once
(`quotas.*.runs`) and its stored bytes (`quotas.*.stored_bytes`).

Both refuse the request (RESOURCE_EXHAUSTED naming `quotas.<principal>.<quota>`, the
limit, the use and the request): a run over them never starts. The run manager calls
`check` under the lock that also claims the run's place, with what the principal's
other creates hold but have not yet started, so the check and the claim are one step
and concurrent creates cannot together pass a quota that has room for one.

Stored bytes are a principal's share of the state dir: its runs' folders (the stored
task copy, trial artifacts, results), measured as `du` does with each file counted once
(runs that link one task copy share it, store/task_bundle.py); a create adds its task
bundle's size. Published data volumes live on the Docker engine, not in the state dir,
and no API publishes them for a principal, so they are not counted.
"""

from __future__ import annotations

from pathlib import Path

from controller.quotas import Quotas
from controller.store.disk import usage_of
from controller.store.runs import RunStore


class RunQuotas:
    def __init__(self, quotas: Quotas, store: RunStore, runs_root: Path) -> None:
        self.quotas = quotas
        self.store = store
        self.runs_root = runs_root

    def stored_bytes(self, principal: str) -> int:
        """What the principal's runs take in the state dir now."""
        rows = self.store.query("SELECT id FROM runs WHERE owner = ?", (principal,))
        return usage_of(self.runs_root / row["id"] for row in rows)

    def check(self, principal: str, runs: int, pending_bytes: int, adding_bytes: int) -> None:
        """CapacityError when one more run, storing `adding_bytes`, would break the
        principal's quotas; `runs` is how many of its runs are active or starting,
        `pending_bytes` what its starting runs are about to store."""
        limits = self.quotas.of(principal)
        if limits.runs is not None and runs + 1 > limits.runs:
            raise self.quotas.refusal(principal, "runs", runs, 1, " runs")
        if limits.stored_bytes is None:
            return
        used = self.stored_bytes(principal) + pending_bytes
        # At the limit even a run that stores nothing up front is refused: its trials'
        # artifacts would go over.
        if used + adding_bytes > limits.stored_bytes or used >= limits.stored_bytes:
            raise self.quotas.refusal(principal, "stored_bytes", used, adding_bytes, " bytes")
