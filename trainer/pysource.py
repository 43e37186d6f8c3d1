"""Parse Python source into an AST from any thread: use `parse`, never `ast.parse`.

CPython before 3.11.9 keeps `ast.parse`'s recursion-depth bookkeeping per interpreter,
not per thread: when two threads turn source into AST objects at once (the controller
validates several runs' proposals in parallel, and reads their knobs), one of them can
fail with "SystemError: AST constructor recursion depth mismatch". Debian 12's Python
(3.11.2), which the project supports, has the bug, so requiring a fixed CPython is not
an option; instead every parse in this project goes through one lock here (ruff's
banned-api rule refuses `ast.parse` elsewhere). Parsing is fast, and nothing else is
serialised: the process's `ast` module stays as CPython ships it.

It lives in trainer/ because the knob parser (trainer/knobs.py) runs both in the
sandbox and in the controller, and trainer/ is the package both import.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source, filename)`, one thread at a time. SyntaxError as ast.parse."""
    with _LOCK:
        return ast.parse(source, filename=filename)  # noqa: TID251 - the one allowed call
