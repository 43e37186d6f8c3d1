"""Keep the head and tail of a job's output within a byte budget."""

from __future__ import annotations

import threading


class OutputCapture:
    """Head and tail of one stream. Thread-safe; counts every byte it was shown."""

    def __init__(self, head_bytes: int = 32 << 10, tail_bytes: int = 32 << 10) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._head_cap = head_bytes
        self._tail_cap = tail_bytes
        self.total = 0
        self._lock = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            room = self._head_cap - len(self._head)
            if room > 0:
                self._head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self._tail += chunk
                if len(self._tail) > self._tail_cap:
                    del self._tail[: len(self._tail) - self._tail_cap]

    def head(self) -> str:
        with self._lock:
            return self._head.decode("utf-8", errors="replace")

    def tail(self) -> str:
        with self._lock:
            return self._tail.decode("utf-8", errors="replace")
