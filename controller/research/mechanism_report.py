"""The run's mechanism report: each mechanism's hook calls and effects (from the records
stored with the trials), how it got in (gates) and how it left (revert, disable).

A mechanism with zero effective calls is reported as NOT injected, whatever its status.
Served as the artifacts `mechanisms.md` and `mechanisms/<name>.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from controller.store.mechanisms import MechanismRow
from controller.store.records import NotFoundError
from controller.store.runs import RunStore

SOURCE_NAME = re.compile(r"^mechanisms/(\w{1,64})\.py$")


@dataclass(frozen=True)
class Summary:
    row: MechanismRow
    calls: int
    effective: int
    failures: int
    by_effect: dict[str, int]
    trials: int  # trials with at least one call

    @property
    def injected(self) -> bool:
        return self.effective > 0


def summaries(store: RunStore, run_id: str) -> list[Summary]:
    calls = store.mechanism_records(run_id)
    out = []
    for row in store.mechanisms(run_id):
        mine = [c for c in calls if c.mechanism == row.name]
        effects: dict[str, int] = {}
        for c in mine:
            effects[c.effect] = effects.get(c.effect, 0) + 1
        out.append(Summary(row, len(mine), sum(c.effective for c in mine),
                           effects.get("failed", 0), effects, len({c.trial for c in mine})))
    return out


def render(store: RunStore, run_id: str) -> str:
    run = store.get_run(run_id)
    items = summaries(store, run_id)
    lines = [f"# Mechanisms of run {run_id}", "",
             f"State {run.state.value}; {run.trials_done} trials; {run.summary}", "",
             "A call is effective when it changed what the loop did (prompt text added, a "
             "proposal rejected or replaced, candidates suggested). A mechanism with no "
             "effective call is not injected.", "",
             "| mechanism | origin | field | status | calls | effective | failures | "
             "injected | trials |", "|---|---|---|---|---|---|---|---|---|"]
    for s in items:
        r = s.row
        lines.append(f"| {r.name} | {r.origin} | {_cell(r.field)} | {r.status} | {s.calls} | "
                     f"{s.effective} | {s.failures} | {'yes' if s.injected else 'NO'} | "
                     f"{s.trials} |")
    for s in items:
        r = s.row
        lines += ["", f"## {r.name}", "", f"- origin: {r.origin}; field: {r.field or '-'}; "
                  f"round {r.round}", f"- status: {r.status}"
                  + (f" - {r.reason}" if r.reason else ""),
                  f"- active from trial {r.activated_at} to {r.ended_at or 'the end'}",
                  f"- effects: {json.dumps(s.by_effect, sort_keys=True)}"]
        if r.description:
            lines.append(f"- description: {_cell(r.description[:600])}")
        for g in r.gates:
            lines.append(f"- gate {g['gate']}: {'passed' if g['passed'] else 'FAILED'} "
                         f"({g['seconds']} s) - {_cell(g['reason'][:400])}")
        if r.score:
            lines.append(f"- window score: {json.dumps(r.score)}")
        if r.traceback:
            lines += ["", "```", r.traceback[-3000:], "```"]
        if r.steps:
            lines.append(f"- Level-2 steps stored: {', '.join(st['step'] for st in r.steps)}"
                         " (prompts and outputs in the store and the LLM call log)")
    return "\n".join(lines) + "\n"


def artifact(store: RunStore, run_id: str, name: str) -> bytes | None:
    """`mechanisms.md` or `mechanisms/<name>.py`; None for other names."""
    if name == "mechanisms.md":
        return render(store, run_id).encode()
    match = SOURCE_NAME.match(name)
    if match is None:
        return None
    for row in store.mechanisms(run_id):
        if row.name == match.group(1) and row.source:
            return row.source.encode()
    raise NotFoundError("artifact", name, f"run {run_id} has no mechanism {match.group(1)!r}")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
