"""No-op: the control arm of ablations. Defines every hook, runs, and changes nothing.

It only counts its calls (in its own state, which the loop never reads), so a report
can show it ran on every trial while having zero effective calls.
"""

from __future__ import annotations

from typing import Any


class NoOp:
    def __init__(self) -> None:
        self.calls = 0

    def context(self, state: Any) -> str:
        self.calls += 1
        return ""

    def filter(self, proposal: Any, state: Any) -> Any:
        self.calls += 1
        return {"action": "accept"}

    def suggest(self, state: Any) -> list[Any]:
        self.calls += 1
        return []

    def observe(self, trial: Any, state: Any) -> None:
        self.calls += 1

    def save_state(self) -> Any:
        return {"calls": self.calls}

    def load_state(self, data: Any) -> None:
        self.calls = int(data["calls"])
