"""Read and rewrite top-level `NAME = literal` constants of a train.py without running it.

Only literals (numbers, strings, tuples of them, and `2**19`-style constant arithmetic)
count as knobs; the rewrite replaces exactly the value's source span, so comments and
layout survive and the diff shows one line per change.
"""

from __future__ import annotations

import ast
from typing import Any

from controller.research.level1.space import KnobValue, ProposalError


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow | ast.Mult):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, int | float) and isinstance(right, int | float):
            return left**right if isinstance(node.op, ast.Pow) else left * right
        raise ValueError("not a constant")
    return ast.literal_eval(node)


def read_knobs(source: str) -> dict[str, Any]:
    """Top-level UPPER_CASE constants with literal values, in file order."""
    knobs: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()):
            try:
                knobs[node.targets[0].id] = _literal(node.value)
            except ValueError:
                continue
    return knobs


def write_knobs(source: str, changes: dict[str, KnobValue]) -> str:
    """Return `source` with each named constant's value replaced by the new literal."""
    spans: dict[str, tuple[int, int, int, int]] = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in changes):
            value = node.value
            assert value.end_lineno is not None and value.end_col_offset is not None
            spans[node.targets[0].id] = (value.lineno, value.col_offset, value.end_lineno,
                                         value.end_col_offset)
    for name in changes:
        if name not in spans:
            raise ProposalError(name, "no top-level assignment of this knob in train.py")
    lines = source.splitlines(keepends=True)
    # Replace from the bottom up so earlier spans stay valid.
    for name, (l0, c0, l1, c1) in sorted(spans.items(), key=lambda s: s[1], reverse=True):
        # ast offsets count UTF-8 bytes, not characters.
        first, last = lines[l0 - 1].encode(), lines[l1 - 1].encode()
        lines[l0 - 1:l1] = [first[:c0].decode() + repr(changes[name]) + last[c1:].decode()]
    return "".join(lines)
