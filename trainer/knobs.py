"""Read and rewrite the UPPER_CASE knobs of a train.py without executing it.

Knobs are top-level assignments of literals (int, float, bool, str, tuples of these;
simple arithmetic such as ``2**19`` is folded). Writing replaces only the source span
of the value, so comments and formatting elsewhere survive, and the result is parsed
again to prove it is valid Python holding the new value. `search_space` gives each
tunable knob a typed range for the offline proposers.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
KnobValue = int | float | bool | str | tuple[Any, ...]
_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
}


class KnobError(ValueError):
    """A knob is unknown, not a literal, or given a value of the wrong type."""


@dataclass(frozen=True)
class Knob:
    """One top-level constant of train.py, with where its value sits in the source."""

    name: str
    type: type
    value: KnobValue
    comment: str
    lineno: int
    start: int  # character offset of the value's source span
    end: int


def _fold(node: ast.expr) -> KnobValue:
    """Evaluate a literal expression: constants, tuples, unary minus, + - * / // **."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_fold(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _fold(node.operand)
        if isinstance(inner, int | float) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _fold(node.left), _fold(node.right)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)):
            if isinstance(node.op, ast.Pow) and abs(right) > 64:  # type: ignore[arg-type]
                raise KnobError("exponent too large")
            return _BINOPS[type(node.op)](left, right)  # type: ignore[no-any-return]
    raise KnobError(f"not a literal: {ast.unparse(node)!r}")


def _offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _char_offset(lines: list[str], starts: list[int], lineno: int, col_bytes: int) -> int:
    """ast columns count UTF-8 bytes; convert to a character offset in the source."""
    line = lines[lineno - 1]
    return starts[lineno - 1] + len(line.encode()[:col_bytes].decode(errors="ignore"))


def read_knobs(source: str) -> dict[str, Knob]:
    """All top-level UPPER_CASE literal assignments, in source order."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(source)
    knobs: dict[str, Knob] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if not isinstance(target, ast.Name) or not KNOB_NAME.match(target.id):
            continue
        try:
            folded = _fold(value)
        except (KnobError, ArithmeticError):
            continue  # computed constants are not knobs
        assert value.end_lineno is not None and value.end_col_offset is not None
        start = _char_offset(lines, starts, value.lineno, value.col_offset)
        end = _char_offset(lines, starts, value.end_lineno, value.end_col_offset)
        tail = lines[value.end_lineno - 1][end - starts[value.end_lineno - 1]:]
        comment = tail.split("#", 1)[1].strip() if "#" in tail else ""
        knobs[target.id] = Knob(target.id, type(folded), folded, comment, stmt.lineno, start, end)
    return knobs


def _check_type(knob: Knob, value: Any) -> KnobValue:
    """The value coerced to the knob's type, or a KnobError naming the knob."""
    def wrong() -> KnobError:
        return KnobError(f"knob {knob.name} is {knob.type.__name__} (currently "
                         f"{knob.value!r}); got {value!r} of type {type(value).__name__}")

    if knob.type is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if knob.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise wrong()
        return value
    if knob.type is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        if not math.isfinite(value):
            raise wrong()
        return float(value)
    if knob.type is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if knob.type is tuple:
        assert isinstance(knob.value, tuple)
        if not isinstance(value, tuple | list) or len(value) != len(knob.value):
            raise wrong()
        out = []
        for old, new in zip(knob.value, value, strict=True):
            sub = Knob(knob.name, type(old), old, "", 0, 0, 0)
            try:
                out.append(_check_type(sub, new))
            except KnobError:
                raise wrong() from None
        return tuple(out)
    raise wrong()


def _format(value: KnobValue, old_source: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and "**" in old_source and value > 0:
        exp = value.bit_length() - 1
        if 1 << exp == value:
            return f"2**{exp}"
    if isinstance(value, str) and old_source.startswith('"'):
        return json.dumps(value, ensure_ascii=False)  # keep the file's double quotes
    return repr(value)


def write_knobs(source: str, changes: Mapping[str, Any]) -> str:
    """`source` with the named knobs set; everything else byte-for-byte unchanged."""
    knobs = read_knobs(source)
    edits = []
    for name, value in changes.items():
        if name not in knobs:
            raise KnobError(f"unknown knob {name!r}; known knobs: {', '.join(knobs)}")
        knob = knobs[name]
        new = _check_type(knob, value)
        edits.append((knob.start, knob.end, _format(new, source[knob.start:knob.end])))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    reread = read_knobs(source)
    for name, value in changes.items():
        expected = _check_type(knobs[name], value)
        if reread.get(name) is None or reread[name].value != expected:
            raise KnobError(f"rewriting knob {name} did not round-trip")
    return source


@dataclass(frozen=True)
class Range:
    """Where a knob may move: numeric [low, high] (maybe log-scale) or a set of choices."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self._cast(value)

    def perturb(self, value: Any, rng: random.Random, scale: float = 0.2) -> Any:
        """A nearby value: a step of `scale` of the range (in log space if log-scale)."""
        if self.kind == "choice":
            return rng.choice([c for c in self.choices if c != value] or list(self.choices))
        if self.log and value > 0:
            span = math.log(self.high) - math.log(self.low)
            new = math.exp(math.log(value) + rng.gauss(0.0, scale * span))
        else:
            new = value + rng.gauss(0.0, scale * (self.high - self.low))
        new = self._cast(min(self.high, max(self.low, new)))
        if new == value and self.kind == "int":
            new = self._cast(min(self.high, max(self.low, value + rng.choice((-1, 1)))))
        return new

    def _cast(self, value: float) -> Any:
        return round(value) if self.kind == "int" else float(value)


# Knobs that define the experiment rather than tune it.
FIXED_KNOBS = frozenset({"TIME_BUDGET_SECONDS", "WARMUP_STEPS", "SEED", "COMPILE", "MAX_LOSS",
                         "SEQ_LEN", "MAX_STEPS"})


def _default_range(knob: Knob) -> Range | None:
    name, value = knob.name, knob.value
    fixed: dict[str, Range] = {
        "DEPTH": Range(name, "int", 1, 24),
        "ASPECT_RATIO": Range(name, "choice", choices=(16, 32, 48, 64, 96, 128)),
        "HEAD_DIM": Range(name, "choice", choices=(16, 32, 64, 128)),
        "WINDOW_PATTERN": Range(name, "choice", choices=("L", "SL", "SSL", "SSSL")),
        "ADAM_BETAS": Range(name, "choice", choices=((0.8, 0.95), (0.9, 0.95), (0.9, 0.99))),
        "WEIGHT_DECAY": Range(name, "float", 0.0, 1.0),
        "MUON_MOMENTUM": Range(name, "float", 0.8, 0.99),
        "NS_STEPS": Range(name, "int", 3, 8),
        "WARMUP_RATIO": Range(name, "float", 0.0, 0.2),
        "WARMDOWN_RATIO": Range(name, "float", 0.0, 1.0),
        "FINAL_LR_FRAC": Range(name, "float", 0.0, 0.5),
        "LOGIT_SOFTCAP": Range(name, "float", 5.0, 50.0, log=True),
    }
    if name in fixed:
        return fixed[name]
    if knob.type is bool:
        return Range(name, "choice", choices=(True, False))
    if knob.type is int and isinstance(value, int) and value > 0:
        if value & (value - 1) == 0:  # powers of two stay powers of two
            exp = value.bit_length() - 1
            return Range(name, "choice", choices=tuple(1 << e for e in
                                                         range(max(0, exp - 3), exp + 4)))
        return Range(name, "int", max(1, value // 4), value * 4, log=True)
    if knob.type is float and isinstance(value, float) and value > 0:
        return Range(name, "float", value / 10, value * 10, log=True)
    return None


def search_space(source: str) -> dict[str, Range]:
    """A range for every tunable knob of `source` (fixed knobs are left out)."""
    space = {}
    for knob in read_knobs(source).values():
        if knob.name in FIXED_KNOBS:
            continue
        rng = _default_range(knob)
        if rng is not None:
            space[knob.name] = rng
    return space
