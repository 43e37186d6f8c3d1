"""Calls in flight per LLM endpoint (base URL and model), and what the endpoint was found
to accept, shared by every provider of the controller: the proposer, Level 1.5 and
Level 2's designer each hold their own provider, but they talk to one server, which may
have one slot. llama.cpp's server (llama-cpp-python, whose
`interrupt_requests` is on by default) ends a streamed answer early - often with nothing
sent - when another request arrives. An endpoint seen doing that is then called one
request at a time (controller/llm/capabilities.py remembers it)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from controller.llm.capabilities import Capabilities


@dataclass
class Call:
    overlapped: bool = False  # another call to the endpoint was in flight meanwhile


@dataclass
class EndpointGate:
    capabilities: Capabilities = field(default_factory=Capabilities)
    serial: threading.Lock = field(default_factory=threading.Lock)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: list[Call] = field(default_factory=list)

    @contextlib.contextmanager
    def call(self) -> Iterator[Call]:
        """A call to the endpoint; one at a time once the endpoint needs it."""
        one_at_a_time = not self.capabilities.concurrent
        with self.serial if one_at_a_time else contextlib.nullcontext():
            me = Call()
            with self._lock:
                for other in self._active:
                    other.overlapped = True
                me.overlapped = bool(self._active)
                self._active.append(me)
            try:
                yield me
            finally:
                with self._lock:
                    self._active.remove(me)


_GATES: dict[tuple[str, str], EndpointGate] = {}
_GATES_LOCK = threading.Lock()


def gate(endpoint: str, model: str) -> EndpointGate:
    with _GATES_LOCK:
        return _GATES.setdefault((endpoint.rstrip("/"), model), EndpointGate())
