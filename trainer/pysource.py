"""Parse Python source into an AST from any thread: use `parse`, never `ast.parse`.

CPython before 3.11.9 keeps `ast.parse`'s recursion-depth bookkeeping per interpreter,
not per thread: when two threads turn source into AST objects at once (the controller
validates several runs' proposals in parallel, and reads their knobs), one of them can
fail with "SystemError: AST constructor recursion depth mismatch". Debian 12's Python
(3.11.2), which the project supports, has the bug, so requiring a fixed CPython is not
an option; instead every parse in this project goes through one lock here (ruff's
banned-api rule refuses `ast.parse` elsewhere). Parsing is fast, and nothing else is
serialised: the process's `ast` module stays as CPython ships it.

A garbage collection during a parse breaks the same bookkeeping on one thread: it runs
finalisers (asyncio logging a lost exception), 3.11's traceback formatter parses source
lines, and the outer parse fails; running Python mid-parse is also how another thread
gets in. So no collection runs during a parse here, and the lock is re-entrant in case a
finaliser still reaches `parse`.

It lives in trainer/ because the knob parser (trainer/knobs.py) runs both in the
sandbox and in the controller, and trainer/ is the package both import.
"""

from __future__ import annotations

import ast
import gc
import threading

_LOCK = threading.RLock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source, filename)`, one thread at a time. SyntaxError as ast.parse."""
    with _LOCK:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(source, filename=filename)  # noqa: TID251 - the one allowed call
        finally:
            if collecting:
                gc.enable()
