"""The registry of built-in mechanisms: every module of this folder is one, named as its
file (`step_bandit.py` is the mechanism `step_bandit`), with one class and a docstring
whose first line describes it. Each is loaded into the sandboxed host exactly like a
generated mechanism (same interface, same gates), so the registry reads the files as
text and never imports them: adding one is one new file plus its test.

The CLI's help, Level 2's offline choice, the ablation's controls and the tests all
read names() and describe().
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from trainer import pysource

_HERE = Path(__file__).resolve().parent


@functools.cache
def _files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(_HERE.glob("*.py"))
            if not path.stem.startswith("_")}


def names() -> tuple[str, ...]:
    """The built-in mechanisms' names, sorted."""
    return tuple(_files())


def source(name: str) -> str:
    """The module source of a built-in mechanism, as the host will load it."""
    if name not in _files():
        raise KeyError(f"no built-in mechanism {name!r}; known: {', '.join(names())}")
    return _files()[name].read_text(encoding="utf-8")


def describe(name: str) -> str:
    """The first line of the mechanism's docstring."""
    doc = ast.get_docstring(pysource.parse(source(name))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
