"""What the controller takes on at once, decided at the API edge before a body is read.

- StreamBudget: long-lived calls (any call whose response or request is a stream:
  WatchRun, Execute, health Watch, reflection) open at once, over all clients and per
  client. Unary calls (ListRuns, GetRun, health Check) never wait behind them: grpc's
  own concurrency cap is set well above the stream budget (controller/api/server.py).
- Admission: Execute calls running or queued for a sandbox slot.
- ByteBudget: bytes of large request bodies (Execute, CreateRun) held at once. A call
  is charged what it declared (metadata `bilevel-request-bytes`) or else its method's
  cap right before its body is read (bodies are read a few at a time, edge.LARGE_READS,
  so undeclared small calls do not crowd the budget), then what the body turned out to
  be, until the call ends (for Execute: until its job ends).

Every refusal is a CapacityError (RESOURCE_EXHAUSTED) naming the setting that bounds it.
Everything here runs on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Any

import structlog

from controller.research.errors import CapacityError

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 257 << 20  # the transport's cap: Execute's 256 MiB of files (JobSpec)
DEFAULT_STREAMS = 128
DEFAULT_STREAMS_PER_CLIENT = 32
DEFAULT_REQUEST_BYTES = 1 << 30  # four Execute bodies of the largest size
STREAMS_KEY = "server.max_streams"
STREAMS_PER_CLIENT_KEY = "server.max_streams_per_client"
BYTES_KEY = "server.max_request_bytes_in_flight"
QUEUE_KEY = "server.execute_queue"
DECLARED_BYTES = "bilevel-request-bytes"  # metadata: the size of the call's request body


class StreamBudget:
    """Open streams: at most `total` in all and `per_client` for one client identity."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: dict[str, int] = {}
        self.in_use = 0

    def enter(self, client: str) -> None:
        held = self.open.get(client, 0)
        if held >= self.per_client:
            raise CapacityError(STREAMS_PER_CLIENT_KEY, (
                f"this client has {held} streams open, the most one client may "
                f"({STREAMS_PER_CLIENT_KEY} = {self.per_client}); close one (WatchRun, "
                "Execute) or retry later"))
        if self.in_use >= self.total:
            raise CapacityError(STREAMS_KEY, (
                f"all {self.total} streams this server serves at once are open "
                f"({STREAMS_KEY} = {self.total}); retry later"))
        self.open[client] = held + 1
        self.in_use += 1

    def leave(self, client: str) -> None:
        self.in_use -= 1
        left = self.open[client] - 1
        if left:
            self.open[client] = left
        else:
            del self.open[client]


class Admission:
    """Execute calls in flight (running or queued for a slot): at most slots + queue."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.capacity = slots + queue
        self.in_flight = 0

    def enter(self) -> int:
        """Admit one call and return its queue position (0: a slot should be free)."""
        if self.in_flight >= self.capacity:
            raise CapacityError(QUEUE_KEY, (
                f"all {self.slots} sandbox slots and {self.capacity - self.slots} queue "
                f"places ({QUEUE_KEY}) are taken; retry later"))
        self.in_flight += 1
        return max(0, self.in_flight - self.slots)

    def leave(self) -> None:
        self.in_flight -= 1


class ByteBudget:
    """Bytes of large request bodies held at once. `on_release` runs after a release of
    at least `give_back_bytes` (to hand freed memory back to the system)."""

    def __init__(self, limit: int, on_release: Callable[[], None] | None = None,
                 give_back_bytes: int = 16 << 20) -> None:
        self.limit = limit
        self.in_use = 0
        self.on_release = on_release
        self.give_back_bytes = give_back_bytes

    def reserve(self, size: int, declared: bool) -> None:
        if self.in_use + size <= self.limit:
            self.in_use += size
            return
        how = ("it declared" if declared else
               f"its method's cap, as it declared no size ({DECLARED_BYTES} metadata)")
        raise CapacityError(BYTES_KEY, (
            f"{self.in_use} of the {self.limit} bytes of request bodies this server holds at "
            f"once ({BYTES_KEY}) are in use; this call needs {size} ({how}); retry later"))

    def release(self, size: int) -> None:
        self.in_use -= size
        if self.on_release is not None and size >= self.give_back_bytes:
            self.on_release()


class Ticket:
    """One large-body call's hold on its Execute place (taken here) and its bytes
    (reserve, before the read); released once, when the call ends, or when its job ends
    if the servicer kept it for the job."""

    def __init__(self, budget: ByteBudget, size: int, declared: bool,
                 admission: Admission | None) -> None:
        self.budget, self.size, self.declared = budget, size, declared
        self.admission = admission
        self.position = admission.enter() if admission is not None else 0
        self.reserved = False
        self.kept = False
        self.released = False

    def reserve(self) -> None:
        """Charge the declared size (else the method's cap): the body is read next."""
        self.budget.reserve(self.size, self.declared)
        self.reserved = True

    def observed(self, size: int) -> None:
        """The body has been read: charge its true size from now on."""
        if size > self.size:  # only a declared size can be below the body
            raise CapacityError(BYTES_KEY, (
                f"the request body is {size} bytes, more than the {self.size} it declared "
                f"in the {DECLARED_BYTES} metadata"))
        self.budget.in_use -= self.size - size
        self.size = size

    def keep_until(self, job: asyncio.Future[Any]) -> None:
        """Hold the place and the bytes until `job` is done, even past the call's end."""
        self.kept = True
        job.add_done_callback(lambda _: self.release())

    def call_ended(self) -> None:
        if not self.kept:
            self.release()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.admission is not None:
            self.admission.leave()
        if self.reserved:
            self.budget.release(self.size)


# The ticket of the call being served (set by the edge around the servicer).
CURRENT: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "bilevel_ticket", default=None)


def current_ticket() -> Ticket:
    ticket = CURRENT.get()
    if ticket is None:
        raise RuntimeError("no admission ticket: a large-body method is served without "
                           "the edge's admission (controller/api/edge.py)")
    return ticket


class MemoryGiveBack:
    """Returns freed memory to the system after large requests. A failed call's body
    can stay reachable only through a cycle (exception, traceback, frame) until the
    cyclic collector runs, which an idle server rarely does; and glibc keeps what grpc's
    many small receive buffers freed in its per-thread arenas, so the process would keep
    its peak. So: gc.collect(), then malloc_trim(0). In a thread, at most one at a time
    (a request during one runs one more after it)."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._running = False
        self._again = False

    def __call__(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        asyncio.get_running_loop().run_in_executor(None, self._give_back).add_done_callback(
            self._done)

    def _give_back(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._running = False
        if future.exception() is not None:
            log.warning("malloc_trim failed", error=str(future.exception()))
        if self._again:
            self._again = False
            self()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim
