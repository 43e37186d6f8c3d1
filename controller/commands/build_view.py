"""Show a task image's build on the terminal while a command waits for it: each step as
a line on stderr, and pip's latest line under a spinner (every line when stderr is not a
terminal). Without it the terminal stays blank for the whole download and install."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from controller.sandbox import build_progress

DETAIL_PREFIXES = ("pip: ", "install: ")


@contextlib.contextmanager
def showing_build(console: Console | None = None) -> Iterator[None]:
    """Show every build progress line reported while the block runs."""
    console = console or Console(stderr=True)
    lock = threading.Lock()
    status: list[Status] = []

    def show(line: str) -> None:
        with lock:
            if line.startswith(DETAIL_PREFIXES) and console.is_terminal:
                if not status:
                    status.append(console.status("", spinner="dots"))
                    status[0].start()
                status[0].update(escape(f"task image: {line}"))
            else:
                console.print(f"task image: {escape(line)}", highlight=False,
                              soft_wrap=True)

    try:
        with build_progress.listening(show):
            yield
    finally:
        with lock:
            for spinner in status:
                spinner.stop()
