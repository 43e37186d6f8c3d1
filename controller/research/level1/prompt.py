"""The proposer's prompt: the task, the hardware, the incumbent (knobs or code), the
recent trials with their actual changes, outcomes and training facts (steps, tokens,
parameters, training seconds, peak memory — Karpathy's summary block), crash tracebacks,
lessons of earlier runs, and the text search mechanisms add. One function per section,
so a reader sees what the LLM saw.

The prompt is ordered for prompt caches: the system prompt holds what stays the same
from call to call (the role, the task, the answer format, then the knobs or the code,
which change only when a candidate is kept), and the user message the changing trace.
The trace is bounded by characters (about TRACE_CHARS / 4 tokens), oldest lines first
out, so a long run's prompt stops growing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from controller.research.level1.progress import summary
from controller.research.level1.proposer import ProposerContext
from controller.research.level1.space import SearchSpace
from controller.research.task import GPT, Objective
from controller.store.records import TrialRecord, TrialStatus

SYSTEM = (
    "You are a careful machine-learning researcher improving a training script by "
    "experiment. Each experiment changes {file}, trains it for the same fixed time "
    "budget in an isolated sandbox, and measures {objective}. Propose ONE "
    "experiment at a time: a concrete change with a short, testable hypothesis. Learn from "
    "the trials shown: do not repeat a change that was already tried, and avoid changes "
    "that crashed. Answer in exactly the format asked for.")

PARAMS_FORMAT = (
    "Answer with one JSON object and nothing else:\n"
    '{{"changes": {{"KNOB_NAME": new_value, ...}}, "hypothesis": "why this should {goal}"}}\n'
    "Change {changes} from the list below, each within its range and of its type.")
TRACE_CHARS = 8000  # the changing part's history lines, at most (about 2,000 tokens)

CODE_FORMAT = (
    "Answer with one line `HYPOTHESIS: why this should {goal}`, then one or more "
    "edit blocks of {file}:\n"
    "<<<<<<< SEARCH\n(exact lines of the current {file})\n=======\n(replacement lines)\n"
    ">>>>>>> REPLACE\n"
    "Each SEARCH text must match the current file exactly once. Protected (do not touch): "
    "{protected}.")


def build(ctx: ProposerContext, mode: str, task_description: str, protected: str,
          history_trials: int, objective: Objective = GPT,
          max_changes: int = 2, editable: str = "train.py") -> tuple[str, str]:
    """(system, user) prompts for one proposal: the stable prefix and the changing trace.
    Values are shown in the task's metric (`objective`), not the loss the loop
    minimises; the file is named by its path in the task (`editable`)."""
    goal = f"{'raise' if objective.maximize else 'lower'} {objective.metric}"
    changes = "exactly 1 knob" if max_changes == 1 else f"1 to {max_changes} knobs"
    answer = PARAMS_FORMAT.format(goal=goal, changes=changes) if mode == "params" else \
        CODE_FORMAT.format(goal=goal, protected=protected, file=editable)
    stable = [
        SYSTEM.format(file=editable, objective=objective.describe()),
        "# Task\n" + task_description,
        "# Answer format\n" + answer,
        _knobs(ctx.incumbent, ctx.space) if mode == "params" else _code(ctx, editable),
    ]
    sections = [
        _hardware(ctx.history),
        _incumbent(ctx, objective),
        _history(ctx.history, history_trials, objective),
        _curves(ctx, objective),
        _lines("# In flight (already proposed, results pending; do not repeat them)",
               ctx.in_flight),
        _lines("# Lessons from earlier runs on this task (they may not transfer)",
               ctx.lessons),
        _lines("# Notes from the search mechanisms", ctx.mechanism_context),
        _lines("# Rejected by the search mechanisms (propose something different)",
               ctx.rejections),
        _crash(ctx, mode, editable),
        "# Your answer\nPropose the next experiment, in the answer format above.",
    ]
    return "\n\n".join(stable), "\n\n".join(s for s in sections if s)


def _fmt(value: float | None, objective: Objective = GPT) -> str:
    return "-" if value is None else f"{objective.shown(value):.6f}"


def params_schema(space: SearchSpace, knobs: Sequence[str], max_changes: int) -> dict[str, Any]:
    """The JSON schema of a params-mode answer, for servers with structured output: only
    the knobs offered, each with its type and range. Validation on our side still
    decides; this only keeps a constrained decoder from wandering."""
    properties: dict[str, Any] = {}
    for knob in space.knobs:
        if knob.name not in knobs:
            continue
        if knob.kind == "choice":
            properties[knob.name] = {"enum": list(knob.choices)}
        else:
            properties[knob.name] = {"type": "integer" if knob.kind == "int" else "number",
                                     "minimum": knob.low, "maximum": knob.high}
    return {"type": "object", "additionalProperties": False,
            "required": ["changes", "hypothesis"],
            "properties": {
                "changes": {"type": "object", "properties": properties,
                            "additionalProperties": False, "minProperties": 1,
                            "maxProperties": max_changes},
                "hypothesis": {"type": "string", "minLength": 1, "maxLength": 400}}}


# Training facts from the trainer's summary, shown per trial (key, label, format).
FACTS: tuple[tuple[str, str, str], ...] = (
    ("num_steps", "steps", "{:d}"), ("total_tokens_M", "tokens", "{:.1f}M"),
    ("num_params_M", "params", "{:.1f}M"), ("training_seconds", "train", "{:.0f}s"),
    ("memory_gb", "peak mem", "{:.2f}GB"), ("mfu_percent", "MFU", "{:.1f}%"),
)


def _facts(metrics: dict[str, Any]) -> str:
    parts = []
    for key, label, fmt in FACTS:
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            parts.append(f"{label} {fmt.format(value)}")
        except ValueError:  # an int format given a float
            parts.append(f"{label} {value:g}")
    return ", ".join(parts)


def _hardware(history: Sequence[TrialRecord]) -> str:
    """Where the trials run, as the trainer reported it (the device it trained on)."""
    for t in reversed(history):
        device = t.metrics.get("device") if t.metrics else None
        if isinstance(device, str) and device:
            return f"# Hardware\nTrials train on {device[:120]}, one trial at a time per slot."
    return ""


def _incumbent(ctx: ProposerContext, objective: Objective = GPT) -> str:
    name = objective.metric
    text = (f"# Incumbent\nBest {name} so far {_fmt(ctx.best_val_bpb, objective)} (baseline "
            f"{_fmt(ctx.baseline_val_bpb, objective)})")
    if ctx.noise_sigma is not None:
        text += (f"; the seed-to-seed noise of {name} is sigma = {ctx.noise_sigma:.2e}, and a "
                 "change is kept only if its gain clearly exceeds it")
    return text + "."


def _knobs(values: dict[str, object], space: SearchSpace) -> str:
    lines = ["# Knobs you may change (current value; allowed values)"]
    for knob in space.knobs:
        if knob.name not in values:
            continue
        if knob.kind == "choice":
            allowed = "one of " + ", ".join(json.dumps(c) for c in knob.choices)
        else:
            allowed = f"{knob.kind} in [{knob.low:g}, {knob.high:g}]"
            if knob.power_of_two:
                allowed += ", a power of two"
        lines.append(f"- {knob.name} = {json.dumps(values[knob.name])}  ({allowed})")
    return "\n".join(lines)


def _code(ctx: ProposerContext, editable: str = "train.py") -> str:
    which = "the crashed candidate" if ctx.crash else "the incumbent"
    return f"# {editable} ({which}; your edits apply to this file)\n```python\n" \
           f"{ctx.base_source}```"


def _outcome(t: TrialRecord, objective: Objective = GPT) -> str:
    if t.status is TrialStatus.CRASH:
        exc = t.exception or {}
        error = f"{exc.get('type', '')}: {exc.get('message', '')}".strip(": ")
        return f"crash ({t.job_status}{': ' + error[:300] if error else ''})"
    if t.status is TrialStatus.PRUNED:
        return f"pruned early ({str(t.metrics.get('decision', ''))[:200]})"
    status = t.status.value if t.status else "?"
    return f"{status}, {objective.metric} {_fmt(t.val_bpb, objective)}"


def _history(history: Sequence[TrialRecord], limit: int, objective: Objective = GPT) -> str:
    finished = [t for t in history if t.finished and t.status is not None]
    if not finished or limit == 0:
        return ""
    lines: list[str] = []
    for t in finished[-limit:]:
        changes = json.dumps(t.changes, sort_keys=True)[:400] if t.changes else "{}"
        line = f"- trial {t.index}: {_outcome(t, objective)}; changes {changes}"
        facts = _facts({**t.metrics, "memory_gb": t.memory_gb} if t.memory_gb
                       else dict(t.metrics))
        if facts:
            line += f"; {facts}"
        if t.hypothesis:
            line += f"; hypothesis: {t.hypothesis[:200]}"
        elif t.index == 0:
            line += " (baseline)"
        if t.fix_of is not None:
            line += f"; an attempt to fix trial {t.fix_of}"
        lines.append(line)
    while len(lines) > 1 and sum(len(x) + 1 for x in lines) > TRACE_CHARS:
        lines.pop(0)  # the oldest first: the trace stays within its share of the context
    return "\n".join([f"# Recent trials (last {len(lines)} of {len(finished)}, oldest "
                      "first)", *lines])


CURVE_TRIALS = 6  # recent trials whose reported curve the prompt summarises
CURVE_POINTS = 4  # points of each


def _curves(ctx: ProposerContext, objective: Objective = GPT) -> str:
    """A few points of each recent trial's reported curve, as Karpathy's training log
    shows the loss falling: how fast a change learns, not only where it ended."""
    shown = {t.index for t in ctx.history}
    recent = sorted(i for i in ctx.curves if i in shown and ctx.curves[i])[-CURVE_TRIALS:]
    lines = []
    for i in recent:
        points = summary(list(ctx.curves[i]), CURVE_POINTS)
        text = ", ".join(f"{s}: {'nan' if v is None else f'{v:.4g}'}" for s, v in points)
        lines.append(f"- trial {i}: {text}")
    title = (f"# Training curves the trials reported (step: {objective.metric}; the "
             "candidates' own numbers, not scores)")
    return "\n".join([title, *lines]) if lines else ""


def _lines(title: str, items: Sequence[str]) -> str:
    return "\n".join([title, *(f"- {i}" for i in items)]) if items else ""


def _crash(ctx: ProposerContext, mode: str, editable: str = "train.py") -> str:
    if ctx.crash is None:
        return ""
    c = ctx.crash
    where = (f"Edit the crashed {editable} shown above" if mode == "code"
             else "Give knob changes that, applied to the crashed candidate, avoid the crash")
    return (f"# Fix request\nTrial {c.trial} crashed: {c.error}\nLast lines of its log:\n"
            f"```\n{c.log_tail}\n```\n{where}; keep the idea if you can.")
