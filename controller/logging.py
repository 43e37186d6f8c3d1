"""structlog set-up shared by the CLI and the server.

Two sinks: stderr (console or JSON lines) and, once a command knows its state dir, a
JSON-lines file there (`log_to_file`). The CLI keeps stderr to warnings unless
--verbose, so the live view and piped progress are the only things a user reads; the
file keeps the full log. Stderr is looked up at each write, so a Rich live view that
redirects it prints log lines above itself instead of into its frame.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

LOG_FILE = "bilevel.log"
MAX_LINE_BYTES = 16 << 10  # a log line can quote what a job wrote: cap it
MAX_FILE_BYTES = 64 << 20  # past this the file is rotated to bilevel.log.1 on open
LEVELS = logging.getLevelNamesMapping()


class _Sinks:
    """Where each record goes, and from which level."""

    def __init__(self) -> None:
        self.stderr_level = logging.INFO
        self.file_level = logging.INFO
        self.json = False
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self.lock = threading.Lock()
        self.console = structlog.dev.ConsoleRenderer(colors=False)


_SINKS = _Sinks()


def _level(name: str) -> int:
    return LEVELS.get(name.upper(), logging.INFO)


def configure_logging(fmt: str = "console", level: str = "info",
                      stderr_level: str | None = None) -> None:
    """Records at `level` and above are kept; stderr shows those at `stderr_level` and
    above (default: `level`)."""
    _SINKS.json = fmt == "json"
    _SINKS.file_level = _level(level)
    _SINKS.stderr_level = max(_level(stderr_level or level), _SINKS.file_level)
    _SINKS.console = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _fan_out,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_SINKS.file_level),
        cache_logger_on_first_use=False,
    )


def log_to_file(state_dir: Path) -> Path:
    """Also write every kept record, as JSON lines, to <state_dir>/bilevel.log."""
    path = state_dir / LOG_FILE
    with _SINKS.lock:
        if _SINKS.path == path:
            return path
        if _SINKS.file is not None:
            _SINKS.file.close()
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one: its user's
        if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
            path.replace(path.with_name(LOG_FILE + ".1"))
        _SINKS.file = path.open("a", encoding="utf-8", errors="replace")
        _SINKS.path = path
    return path


def _fan_out(_logger: Any, _method: str, event: structlog.typing.EventDict) -> str:
    level = _level(str(event.get("level", "info")))
    line = json.dumps(event, default=repr)
    if len(line) > MAX_LINE_BYTES:
        line = json.dumps({"level": event.get("level"), "timestamp": event.get("timestamp"),
                           "event": str(event.get("event"))[:1000],
                           "truncated_bytes": len(line)})
    with _SINKS.lock:
        if _SINKS.file is not None:
            _SINKS.file.write(line + "\n")
            _SINKS.file.flush()
    if level >= _SINKS.stderr_level:
        text = line if _SINKS.json else _SINKS.console(_logger, _method, dict(event))
        print(str(text)[:MAX_LINE_BYTES], file=sys.stderr, flush=True)
    raise structlog.DropEvent
