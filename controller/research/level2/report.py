"""The run's mechanism report: each mechanism's hook calls and effects (from the records
stored with the trials), how it got in (gates) and how it left (revert, disable).

Each gets one finding, and the findings are kept apart because they mean different
things: it "changed N trials" (effective calls: its suggestion ran, its filter changed
the trial, its prompt text reached a prompt-reading proposer); it "ran, had nothing to
do" (acting hooks called, none effective); it was "never called" (no acting hook call,
e.g. activated at the run's last trial, or a suggest-only mechanism off the cadence);
"not judged: window too short" (on trial when the run ended). Served as the artifacts
`mechanisms.md` and `mechanisms/<name>.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from controller.store.mechanisms import ACTIVE, GATE_REJECTED, MechanismRow
from controller.store.records import EventKind, NotFoundError
from controller.store.runs import RunStore
from mechanisms.interface import ACTING_HOOKS

SOURCE_NAME = re.compile(r"^mechanisms/(\w{1,64})\.py$")


@dataclass(frozen=True)
class Summary:
    row: MechanismRow
    calls: int
    effective: int
    failures: int
    by_effect: dict[str, int]
    trials: int  # trials with at least one call
    acting_calls: int = 0  # calls of context, filter and suggest
    changed_trials: int = 0  # trials with an effective call
    skipped: int = 0  # answers skipped (e.g. a frozen knob), the mechanism kept
    finding: str = ""

    @property
    def injected(self) -> bool:
        return self.effective > 0


def finding(row: MechanismRow, acting: int, changed: int, last_trial: int,
            finished: bool) -> str:
    if row.status == GATE_REJECTED:
        return "never activated: stopped at a gate"
    if row.status == ACTIVE and row.window_end is not None and finished \
            and last_trial < row.window_end:
        return (f"not judged: window too short (run ended at trial {last_trial}, its "
                f"window to trial {row.window_end})") + (
            f"; changed {changed} trial(s)" if changed else "")
    if changed:
        return f"changed {changed} trial(s)"
    if acting:
        return f"ran, had nothing to do ({acting} acting call(s), none changed a trial)"
    if row.activated_at is not None and row.activated_at > last_trial:
        return "never called: activated after the last trial"
    return "never called"


def summaries(store: RunStore, run_id: str) -> list[Summary]:
    calls = store.mechanism_records(run_id)
    run = store.get_run(run_id)
    last = max(run.trials_done - 1, 0)
    out = []
    for row in store.mechanisms(run_id):
        mine = [c for c in calls if c.mechanism == row.name]
        effects: dict[str, int] = {}
        for c in mine:
            effects[c.effect] = effects.get(c.effect, 0) + 1
        acting = sum(c.hook in ACTING_HOOKS for c in mine)
        changed = len({c.trial for c in mine if c.effective})
        out.append(Summary(row, len(mine), sum(c.effective for c in mine),
                           effects.get("failed", 0), effects, len({c.trial for c in mine}),
                           acting, changed, sum(len(c.skipped) for c in mine),
                           finding(row, acting, changed, last, run.state.terminal)))
    return out


def render(store: RunStore, run_id: str) -> str:
    run = store.get_run(run_id)
    items = summaries(store, run_id)
    lines = [f"# Mechanisms of run {run_id}", "",
             f"State {run.state.value}; {run.trials_done} trials; {run.summary}", "",
             "A call is effective only when it changed what ran: its suggestion became the "
             "trial, its filter verdict changed the trial, its prompt text reached a "
             "proposer that reads prompts. Offered suggestions and superseded verdicts are "
             "not effective. 'Ran, had nothing to do' and 'never called' are different "
             "findings.", "",
             "| mechanism | origin | field | status | calls | effective | failures | "
             "finding |", "|---|---|---|---|---|---|---|---|"]
    for s in items:
        r = s.row
        lines.append(f"| {r.name} | {r.origin} | {_cell(r.field)} | {r.status} | {s.calls} | "
                     f"{s.effective} | {s.failures} | {_cell(s.finding)} |")
    skipped = round_notes(store, run_id)
    if skipped:
        lines += ["", "## Rounds that brought no mechanism", "",
                  *(f"- after trial {trial}: {_cell(detail[:600])}" for trial, detail in skipped)]
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
        if s.skipped:
            lines.append(f"- answers skipped, mechanism kept (e.g. a frozen knob): {s.skipped}")
        if r.score.get("test"):
            p = r.score.get("p")
            lines.append(f"- verdict: {r.score['test']}; pairs {len(r.score.get('pairs', []))}"
                         f", effect {r.score.get('effect')} sigma, p "
                         f"{'-' if p is None else round(p, 4)}, sigma "
                         f"{r.score.get('sigma')} from {r.score.get('sigma_from')}")
        elif r.score:
            lines.append(f"- score: {json.dumps(r.score)}")
        if r.traceback:
            lines += ["", "```", r.traceback[-3000:], "```"]
        if r.steps:
            lines.append(f"- Level-2 steps stored: {', '.join(st['step'] for st in r.steps)}"
                         " (prompts and outputs in the store and the LLM call log)")
    return "\n".join(lines) + "\n"


def round_notes(store: RunStore, run_id: str) -> list[tuple[int, str]]:
    """(trial, why) of every Level-2 round that failed or was skipped: a design the LLM
    could not finish, no library mechanism left, too few trials left for a verdict."""
    out: list[tuple[int, str]] = []
    seq = 0
    while batch := store.events_after(run_id, seq, limit=2000):
        seq = batch[-1].seq
        out += [(int(e.payload.get("trial", -1)), str(e.payload.get("detail", "")))
                for e in batch if e.kind is EventKind.MECHANISM
                and e.payload.get("action") == "round_skipped"]
    return out


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
