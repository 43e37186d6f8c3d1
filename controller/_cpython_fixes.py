"""Work around a CPython 3.11 bug that the controller's threads hit.

Before 3.11.9, `ast.parse` keeps its recursion-depth bookkeeping per interpreter, not
per thread; when two threads convert ASTs at once (runs of one controller validating
proposals in parallel), one fails with "SystemError: AST constructor recursion depth
mismatch". Parsing is fast, so the controller serialises it with one process-wide lock.
"""

from __future__ import annotations

import ast
import sys
import threading
from typing import Any

_AFFECTED = sys.version_info < (3, 11, 9)
_lock = threading.Lock()
_original_parse = ast.parse


def _serialised_parse(*args: Any, **kwargs: Any) -> Any:
    with _lock:
        return _original_parse(*args, **kwargs)


def install() -> None:
    if _AFFECTED and ast.parse is _original_parse:
        ast.parse = _serialised_parse
