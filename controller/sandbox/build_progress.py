"""Progress lines of a task-image build, for whoever shows them (the CLI while it waits
on a controller in its own process). Builds report here; nothing listens by default."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_LISTENERS: list[Callable[[str], None]] = []
_LOCK = threading.Lock()
MAX_LINE_CHARS = 300


def report(line: str) -> None:
    """Hand one line to every listener; a listener's failure never fails the build."""
    line = line.rstrip()[:MAX_LINE_CHARS]
    if not line:
        return
    with _LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        with contextlib.suppress(Exception):
            listener(line)


@contextlib.contextmanager
def listening(callback: Callable[[str], None]) -> Iterator[None]:
    """Call `callback` with every progress line reported while the block runs."""
    with _LOCK:
        _LISTENERS.append(callback)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.remove(callback)
