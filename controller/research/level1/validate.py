"""Every proposal passes here before anything runs: a reason comes back for each
rejection, so an LLM can correct itself, and nothing invalid reaches train.py."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

from controller.research.level1.space import ProposalError, SearchSpace
from controller.research.task import Task
from trainer import knobs as knob_io
from trainer import pysource
from trainer.knobs import KnobValue

SEED_KNOB = re.compile(r"^(\w+_)?SEED$")


def is_seed_knob(name: str) -> bool:
    return bool(SEED_KNOB.match(name))


def _normalize(value: Any) -> Any:
    """JSON has lists and floats where train.py has tuples and ints."""
    if isinstance(value, list):
        return tuple(_normalize(v) for v in value)
    return value


class Validator:
    def __init__(self, task: Task, space: SearchSpace) -> None:
        self.task = task
        self.space = space

    def params(self, base: str, changes: Mapping[str, Any]) -> tuple[dict[str, KnobValue], str]:
        """Checked changes and the candidate source; raises ProposalError with a reason."""
        if not isinstance(changes, Mapping) or not changes:
            raise ProposalError("changes", "must be a non-empty JSON object of knob: value")
        if all(is_seed_knob(str(k)) for k in changes):
            raise ProposalError("changes", "changing only the seed is not an experiment: the "
                                "controller sets seeds itself; change a real knob")
        current = self.task.read_knobs(base)
        clean: dict[str, KnobValue] = {}
        for name, raw in changes.items():
            value = _normalize(raw)
            knob = self.space.get(str(name))  # unknown or frozen knob -> ProposalError
            if knob.kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            knob.check(value)
            clean[knob.name] = value
        if all(current.get(k) == v for k, v in clean.items()):
            raise ProposalError("changes", "changes nothing: every value equals the current one"
                                f" ({json.dumps({k: current.get(k) for k in clean})})")
        clean = {k: v for k, v in clean.items() if current.get(k) != v}
        try:
            candidate = self.task.apply(base, clean)
        except ValueError as exc:
            raise ProposalError("changes", str(exc)) from None
        self._check(candidate)
        return clean, candidate

    def code(self, base: str, candidate: str) -> None:
        """Raises ProposalError if the edited source does not compile, changes nothing
        that runs, only changes the seed, or touches the protected harness lines."""
        if candidate == base:
            raise ProposalError("edits", "the edits leave the file unchanged")
        self._check(candidate)
        if ast.dump(pysource.parse(candidate)) == ast.dump(pysource.parse(base)):
            raise ProposalError("edits", "the edits change only comments or layout; nothing "
                                "would run differently")
        self.task.protected.check(base, candidate)
        old, new = knob_io.read_knobs(base), knob_io.read_knobs(candidate)
        seeds = {k: old[k] for k in new if is_seed_knob(k) and k in old and new[k] != old[k]}
        unseeded = knob_io.write_knobs(candidate, seeds) if seeds else ""
        if seeds and ast.dump(pysource.parse(unseeded)) == ast.dump(pysource.parse(base)):
            raise ProposalError("edits", "the edits only change the seed; that is not an "
                                "experiment")

    def _check(self, source: str) -> None:
        """ProposalError unless `source` is a valid editable file: a task that knows its
        file's kind checks it (a YAML config parses), else it must compile as Python."""
        check = getattr(self.task, "check_source", None)
        if check is not None:
            try:
                check(source)
            except ValueError as exc:
                raise ProposalError("editable", str(exc)) from None
            return
        try:
            compile(source, "train.py", "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise ProposalError("train.py", f"does not compile: {exc.msg} at line "
                                f"{exc.lineno}: {(exc.text or '').strip()}") from None


def knob_changes(task: Task, base: str, candidate: str) -> dict[str, Any]:
    """The knobs whose value differs between two sources (what a trial actually changed)."""
    try:
        old, new = task.read_knobs(base), task.read_knobs(candidate)
    except SyntaxError:
        return {}
    return {k: v for k, v in new.items() if old.get(k) != v}
