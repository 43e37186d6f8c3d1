"""Coalesce a job's output into line-sized Execute chunks.

The sandbox hands over output as the job's writes arrive: `print("a", x)` is four writes
and so, unchanged, four events. Here bytes are held until a newline (a chunk then ends
with the last newline it has, and holds at most MAX_CHUNK_BYTES), and a partial line (a
prompt, a progress bar) goes out once it has waited FLUSH_SECONDS. Bytes keep the order
in which they reached us across streams: data on the other stream first flushes what is
held (the sandbox reads stdout and stderr apart, so that order is only approximate).
Pure (the caller passes the clock), so it is tested without timing.
"""

from __future__ import annotations

MAX_CHUNK_BYTES = 64 << 10
FLUSH_SECONDS = 0.05

Chunk = tuple[str, bytes]


class OutputCoalescer:
    """Holds at most one stream's partial output, under MAX_CHUNK_BYTES."""

    def __init__(self, max_bytes: int = MAX_CHUNK_BYTES,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.flush_seconds = flush_seconds
        self._stream: str | None = None
        self._held = bytearray()
        self._since: float | None = None  # when the held bytes started waiting

    def feed(self, stream: str, data: bytes, now: float) -> list[Chunk]:
        """The chunks ready after `data` arrived on `stream` at time `now`."""
        out = self.flush() if self._stream not in (None, stream) else []
        self._stream = stream
        self._held += data
        if self._since is None and self._held:
            self._since = now
        emitted = False
        while True:
            newline = self._held.rfind(b"\n", 0, self.max_bytes)
            if newline >= 0:
                size = newline + 1
            elif len(self._held) >= self.max_bytes:
                size = self.max_bytes
            else:
                break
            out.append((stream, bytes(self._held[:size])))
            del self._held[:size]
            emitted = True
        if emitted:
            self._since = now if self._held else None
        return out

    def deadline(self) -> float | None:
        """When the held partial line must go out; None when nothing is held."""
        return None if self._since is None else self._since + self.flush_seconds

    def due(self, now: float) -> list[Chunk]:
        """The held bytes if their wait is over, else nothing."""
        deadline = self.deadline()
        return self.flush() if deadline is not None and now >= deadline else []

    def flush(self) -> list[Chunk]:
        """Everything held, now (before another event, or at the end of the job)."""
        out = [(self._stream, bytes(self._held))] if self._held and self._stream else []
        self._held.clear()
        self._since = None
        return out
