"""Distil a finished run into lessons for later runs on the same task: what helped,
what hurt most, what crashed. Plain rules, no LLM: cheap, deterministic, auditable.
Lessons are stored under the task's memory key (controller/research/task.py memory_key:
a task directory's name and hash) and say the task's metric, in its own direction."""

from __future__ import annotations

import json
from collections.abc import Sequence

from controller.research.task import GPT, Objective
from controller.store.memory import Lesson
from controller.store.records import TrialRecord, TrialStatus

MAX_HURT = 3
MAX_LESSONS = 12


def _what(t: TrialRecord) -> str:
    changes = json.dumps(t.changes, sort_keys=True) if t.changes else "a code edit"
    return changes if len(changes) <= 200 else changes[:200] + "..."


def distill(task: str, run_id: str, trials: Sequence[TrialRecord],
            objective: Objective = GPT) -> list[Lesson]:
    """`delta` is in loss units (positive: worse), as the loop's values are."""
    name, shown = objective.metric, objective.shown
    better, worse = ("raised", "lowered") if objective.maximize else ("lowered", "raised")
    finished = sorted((t for t in trials if t.finished and t.status), key=lambda t: t.index)
    best: float | None = None
    helped, hurt, crashed = [], [], []
    for t in finished:
        if t.index == 0:
            best = t.val_bpb
            continue
        if t.status is TrialStatus.CRASH:
            if t.job_status == "invalid":
                continue
            exc = t.exception or {}
            error = f"{exc.get('type', t.job_status)}: {exc.get('message', '')}"[:200]
            crashed.append(Lesson(task, run_id, "crashed", f"{_what(t)} crashed ({error})"))
        elif t.val_bpb is not None and best is not None:
            delta = t.val_bpb - best
            if t.status is TrialStatus.KEEP:
                helped.append(Lesson(task, run_id, "helped", f"{_what(t)} {better} {name} by "
                                     f"{-delta:.6f} (to {shown(t.val_bpb):.6f})", delta))
                best = t.val_bpb
            elif delta > 0:
                hurt.append(Lesson(task, run_id, "hurt", f"{_what(t)} {worse} {name} by "
                                   f"{delta:.6f} over the incumbent", delta))
    hurt.sort(key=lambda lesson: -(lesson.delta or 0.0))
    return (helped + crashed + hurt[:MAX_HURT])[:MAX_LESSONS]
