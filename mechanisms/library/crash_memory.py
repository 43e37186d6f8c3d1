"""Crash memory: reject proposals whose nearest known configuration crashed.

A crash costs a whole trial and teaches nothing about val_bpb. Which neighbourhood is
"near" a crash depends on the search's scale, so this uses no fixed radius: a proposal
is rejected when a crashed configuration is strictly closer to it (`sdk.distance`) than
every configuration known to run - the incumbent and the recent trials that finished -
i.e. it lies on the crash's side. A configuration that also ran fine never counts as a
crash. Learnt from the history it is shown (so it acts from its first call, also when
activated mid-run) and from observe; proposals refused before running are ignored.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class CrashMemory:
    def __init__(self, capacity: int = 50) -> None:
        self.capacity = capacity
        self.crashes: list[dict[str, Any]] = []  # {"index", "config", "message"}
        self.fine: list[dict[str, Any]] = []  # configurations that ran without crashing
        self.seen = -1  # highest trial index learnt from

    def _learn(self, trial: Any, state: Any) -> None:
        if trial["index"] <= self.seen:
            return
        self.seen = trial["index"]
        if not sdk.ran(trial):
            return
        config = sdk.trial_config(state, trial)
        if trial["status"] == "crash":
            self.crashes.append({"index": trial["index"], "config": config,
                                 "message": str(trial["crash"])[:200]})
            self.crashes = self.crashes[-self.capacity:]
        else:
            self.fine = [*self.fine, config][-self.capacity:]

    def _catch_up(self, state: Any) -> None:
        for trial in sdk.unseen(state, self.seen):
            self._learn(trial, state)

    def observe(self, trial: Any, state: Any) -> None:
        self._catch_up(state)
        self._learn(trial, state)

    def filter(self, proposal: Any, state: Any) -> Any:
        self._catch_up(state)
        config = sdk.proposal_config(state, proposal)
        safe = min(sdk.distance(state, config, c) for c in [state["incumbent"], *self.fine])
        nearest = min(self.crashes, default=None,
                      key=lambda c: sdk.distance(state, config, c["config"]))
        if nearest is None:
            return sdk.accept()
        d = sdk.distance(state, config, nearest["config"])
        if d < safe:
            return sdk.reject(f"crash memory: {d:.3f} from trial {nearest['index']}, which "
                              f"crashed ({nearest['message']}), but {safe:.3f} from the "
                              "nearest configuration that ran")
        return sdk.accept()

    def context(self, state: Any) -> str:
        self._catch_up(state)
        if not self.crashes:
            return ""
        lines = [f"- trial {c['index']}: {sdk.changes_from(state, c['config'])} -> "
                 f"{c['message']}" for c in self.crashes[-5:]]
        return "These configurations crashed; avoid their neighbourhood:\n" + "\n".join(lines)

    def save_state(self) -> Any:
        return {"crashes": self.crashes, "fine": self.fine, "seen": self.seen}

    def load_state(self, data: Any) -> None:
        self.crashes = list(data["crashes"])
        self.fine = list(data.get("fine", []))
        self.seen = int(data.get("seen", max((c["index"] for c in self.crashes), default=-1)))
