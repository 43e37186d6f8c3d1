"""Crash memory: remember configurations that crashed and reject proposals near them.

A crash costs a whole trial and teaches nothing about val_bpb, so a proposal within
`radius` of a crashed configuration is rejected with that crash's message.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class CrashMemory:
    def __init__(self, radius: float = 0.05, capacity: int = 50) -> None:
        self.radius = radius
        self.capacity = capacity
        self.crashes: list[dict[str, Any]] = []  # {"index", "config", "message"}

    def observe(self, trial: Any, state: Any) -> None:
        if trial["status"] == "crash":
            self.crashes.append({"index": trial["index"],
                                 "config": sdk.trial_config(state, trial),
                                 "message": str(trial["crash"])[:200]})
            self.crashes = self.crashes[-self.capacity:]

    def filter(self, proposal: Any, state: Any) -> Any:
        config = sdk.proposal_config(state, proposal)
        for crash in self.crashes:
            d = sdk.distance(state, config, crash["config"])
            if d <= self.radius:
                return sdk.reject(f"crash memory: within {d:.3f} of trial {crash['index']}, "
                                  f"which crashed: {crash['message']}")
        return sdk.accept()

    def context(self, state: Any) -> str:
        if not self.crashes:
            return ""
        lines = [f"- trial {c['index']}: {sdk.changes_from(state, c['config'])} -> "
                 f"{c['message']}" for c in self.crashes[-5:]]
        return "These configurations crashed; avoid their neighbourhood:\n" + "\n".join(lines)

    def save_state(self) -> Any:
        return {"crashes": self.crashes}

    def load_state(self, data: Any) -> None:
        self.crashes = list(data["crashes"])
