"""Work around a CPython 3.11 bug that the controller's threads hit.

Before 3.11.9, `ast.parse` keeps its recursion-depth bookkeeping per interpreter, not
per thread; when two threads convert ASTs at once (runs of one controller validating
proposals in parallel), one fails with "SystemError: AST constructor recursion depth
mismatch". Parsing is fast, so the controller serialises it with one process-wide lock.

The bookkeeping breaks on one thread too: a garbage collection during a parse runs
finalisers (asyncio logging a lost exception), 3.11's traceback formatter parses source
lines, and that inner parse fails the outer one, or deadlocked on the lock. Running Python
code mid-parse is also how another thread gets in. So no collection runs during a parse,
and the lock is re-entrant for any other path back in.
"""

from __future__ import annotations

import ast
import gc
import sys
import threading
from typing import Any

_AFFECTED = sys.version_info < (3, 11, 9)
_lock = threading.RLock()
_original_parse = ast.parse


def _serialised_parse(*args: Any, **kwargs: Any) -> Any:
    with _lock:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _original_parse(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()


def install() -> None:
    if _AFFECTED and ast.parse is _original_parse:
        ast.parse = _serialised_parse
