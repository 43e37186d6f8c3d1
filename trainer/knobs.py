"""Read and rewrite the knobs of an editable file (a train.py) without executing it.

The one knob parser of the project: the controller reads every candidate's knobs with
it (a candidate is untrusted input), and the trainer writes a preset's knobs with it
inside the sandbox image, which is why it lives in `trainer/` and uses only the
standard library.

A knob is a top-level assignment (`NAME = value` or `NAME: type = value`) of an
UPPER_CASE name (leading underscores allowed), or of any name a task names (`names`:
nanoGPT's `learning_rate`), to a literal: an int, float, bool or str,
a tuple of these, or arithmetic over numbers (`+ - * / // **`, unary `-`/`+`), which is
folded, e.g. `2**19`. Folding never computes an unbounded value: an int result over
MAX_INT_BITS bits is refused *before* it is computed (`9**9**9`, `7**7**8`), and every
other operator (`<<`, `%`, `"a" * n`, `[0] * n`, calls, names) is refused without
evaluating anything, so a refused constant is simply not a knob.

Writing replaces only the source span of the value, so comments and formatting elsewhere
survive, and the result is read again to prove it is valid Python holding the new value.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from trainer import pysource

KNOB_NAME = re.compile(r"^_*[A-Z][A-Z0-9_]*$")
MAX_INT_BITS = 4096  # the largest int a folded knob may hold (2**19 needs 20)
MAX_DEPTH = 32  # nesting of a knob's value expression (tuples and operators)
KnobValue = int | float | bool | str | tuple[Any, ...]
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
}


class KnobError(ValueError):
    """A knob is unknown, not a literal, too large to fold, or given a value of the wrong
    type; the message names the knob or the expression."""


@dataclass(frozen=True)
class SourceConstant:
    """One knob as it stands in the source: its value and type, its trailing comment and
    where the value's text sits (character offsets), so a rewrite touches only that."""

    name: str
    type: type
    value: KnobValue
    comment: str
    lineno: int
    start: int  # character offset of the value's source span
    end: int


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _too_large(value: object) -> bool:
    return isinstance(value, int) and value.bit_length() > MAX_INT_BITS


def _refuse_unbounded(op: ast.operator, left: int | float, right: int | float) -> None:
    """Raise KnobError when an int result would exceed MAX_INT_BITS; decided from the
    operands' sizes, without computing it. Float results overflow to an error at once."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        at_least = right * (abs(left).bit_length() - 1)  # |left|**right >= 2**at_least
        if at_least > MAX_INT_BITS:
            raise KnobError(f"{left}**{right} would have over {MAX_INT_BITS} bits")
    elif isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise KnobError(f"a product of over {MAX_INT_BITS} bits")


def _fold(node: ast.expr, depth: int = 0) -> KnobValue:
    """The value of a literal expression, or KnobError (ArithmeticError for 1/0 and
    float overflow): constants, tuples, unary -/+ and + - * / // ** over numbers."""
    if depth > MAX_DEPTH:
        raise KnobError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        if _too_large(node.value):
            raise KnobError(f"an int of over {MAX_INT_BITS} bits")
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_fold(e, depth + 1) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _fold(node.operand, depth + 1)
        if _number(inner):
            assert isinstance(inner, int | float)
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _fold(node.left, depth + 1), _fold(node.right, depth + 1)
        if _number(left) and _number(right):
            assert isinstance(left, int | float) and isinstance(right, int | float)
            _refuse_unbounded(node.op, left, right)
            result = _BINOPS[type(node.op)](left, right)
            if _too_large(result):
                raise KnobError(f"an int of over {MAX_INT_BITS} bits")
            if _number(result):  # a negative base to a fractional power is complex
                return result  # type: ignore[no-any-return]
    raise KnobError(f"not a literal: {ast.unparse(node)[:80]!r}")


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


def read_constants(source: str, names: Collection[str] = ()) -> dict[str, SourceConstant]:
    """Every knob of `source` (UPPER_CASE, or one of `names`) with its type, comment and
    span, in source order (a name assigned twice: the last). Raises SyntaxError if
    `source` does not parse."""
    tree = pysource.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(source)
    found: dict[str, SourceConstant] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if not isinstance(target, ast.Name) or not (KNOB_NAME.match(target.id)
                                                    or target.id in names):
            continue
        try:
            folded = _fold(value)
        except (KnobError, ArithmeticError):
            continue  # computed or refused constants are not knobs
        assert value.end_lineno is not None and value.end_col_offset is not None
        start = _char_offset(lines, starts, value.lineno, value.col_offset)
        end = _char_offset(lines, starts, value.end_lineno, value.end_col_offset)
        tail = lines[value.end_lineno - 1][end - starts[value.end_lineno - 1]:]
        comment = tail.split("#", 1)[1].strip() if "#" in tail else ""
        found[target.id] = SourceConstant(target.id, type(folded), folded, comment,
                                          stmt.lineno, start, end)
    return found


def read_knobs(source: str, names: Collection[str] = ()) -> dict[str, Any]:
    """The knobs' values (each a KnobValue) by name, in source order. Raises SyntaxError."""
    return {name: constant.value for name, constant in read_constants(source, names).items()}


def _conform(constant: SourceConstant, value: Any) -> KnobValue:
    """`value` as the constant will hold it, or a KnobError naming the knob. A number
    constant takes any finite number (an int given an integral float stays an int, a
    float given an int stays a float; a task's choices may mix the two); bools, strings
    and tuples (of the same length, item by item) keep their type."""
    def wrong() -> KnobError:
        return KnobError(f"knob {constant.name} is {constant.type.__name__} (currently "
                         f"{constant.value!r}); got {value!r} of type {type(value).__name__}")

    if constant.type is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if constant.type in (int, float):
        if not _number(value) or _too_large(value) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise wrong()
        if constant.type is float:
            try:
                return float(value)
            except OverflowError:
                raise wrong() from None
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if constant.type is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if constant.type is tuple:
        assert isinstance(constant.value, tuple)
        if not isinstance(value, tuple | list) or len(value) != len(constant.value):
            raise wrong()
        out = []
        for old, new in zip(constant.value, value, strict=True):
            item = SourceConstant(constant.name, type(old), old, "", 0, 0, 0)
            try:
                out.append(_conform(item, new))
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


def write_knobs(source: str, changes: Mapping[str, Any], names: Collection[str] = ()) -> str:
    """`source` with the named knobs set; everything else byte-for-byte unchanged.
    Raises KnobError for an unknown knob or a value of the wrong type."""
    constants = read_constants(source, names)
    edits = []
    expected: dict[str, KnobValue] = {}
    for name, value in changes.items():
        if name not in constants:
            raise KnobError(f"unknown knob {name!r}; known knobs: {', '.join(constants)}")
        constant = constants[name]
        expected[name] = _conform(constant, value)
        edits.append((constant.start, constant.end,
                      _format(expected[name], source[constant.start:constant.end])))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    reread = read_knobs(source, names)
    for name, value in expected.items():
        if name not in reread or reread[name] != value:
            raise KnobError(f"rewriting knob {name} did not round-trip")
    return source
