"""SandboxService: one job per Execute call, streamed as accepted/started/output/finished.

Admission is bounded: at most `slots + queue` calls are in flight; the next one gets
RESOURCE_EXHAUSTED at once, before its body is read, instead of waiting without limit
(the edge admits it: controller/api/admission.py). Its place and body bytes are held
until its job ends. Limits over the server's caps are INVALID_ARGUMENT naming the field
and the cap. A client that goes away cancels its job (the backend kills and removes it).
A request mounts data only by the id of data published to this controller's clients
(the backend's resolve_data, controller/sandbox/backend.py); GPUs are the backend's to
hand out. The job runs as the caller's principal: it waits for a slot under that
principal's quotas and fair share (controller/sandbox/fair_share.py). Its output is
coalesced into chunks (output_chunks.py), so a job that writes a byte at a time does not
cost an event per byte.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog

from controller.api import convert, output_chunks
from controller.api.admission import Admission, current_ticket
from controller.api.errors import rpc_errors
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.api.gen.bilevel.v1 import sandbox_pb2_grpc
from controller.api.identity import caller
from controller.api.output_chunks import Chunk, OutputCoalescer
from controller.principals import require_writes
from controller.research.engine import LazyBackend
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.caps import LimitCaps
from controller.sandbox.reaper import OWNER_EXECUTE
from controller.sandbox.spec import JobResult, JobSpec, Limits

log = structlog.get_logger(__name__)
_STREAMS = {"stdout": spb.ExecuteEvent.Output.STREAM_STDOUT,
            "stderr": spb.ExecuteEvent.Output.STREAM_STDERR}


class SandboxServicer(sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(self, engine: LazyBackend, defaults: Limits, caps: LimitCaps,
                 admission: Admission) -> None:
        self.engine = engine
        self.defaults = defaults
        self.caps = caps
        self.pool = ThreadPoolExecutor(max_workers=admission.capacity,
                                       thread_name_prefix="execute")

    @rpc_errors
    async def Execute(self, request: spb.ExecuteRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[spb.ExecuteEvent]:
        ticket = current_ticket()  # the edge's admission, taken before the body was read
        principal = caller()
        require_writes(principal, "run sandbox jobs")
        spec = convert.job_spec(request, self.defaults, self.caps)
        del request  # the spec holds the files now; do not keep the message twice
        executor = (await asyncio.to_thread(self.engine.get)).for_owner(
            OWNER_EXECUTE, principal=principal.name)
        spec = await asyncio.to_thread(executor.resolve_data, spec, principal)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[_Item] = asyncio.Queue()
        cancel = threading.Event()
        job = loop.run_in_executor(self.pool, self._run, executor, spec, events, loop, cancel)
        ticket.keep_until(job)  # the place and the bytes are the job's until it ends
        try:
            yield spb.ExecuteEvent(accepted=spb.ExecuteEvent.Accepted(
                queue_position=ticket.position))
            async for event in _stream(job, events):
                yield event
            result: JobResult = job.result()
            yield spb.ExecuteEvent(finished=spb.ExecuteEvent.Finished(
                result=convert.job_result(result)))
        finally:
            if not job.done():  # the client left or the server is stopping: kill the job
                log.info("execute call ended early; cancelling its job")
                cancel.set()

    @staticmethod
    def _run(executor: SandboxBackend, spec: JobSpec,
             events: asyncio.Queue[_Item], loop: asyncio.AbstractEventLoop,
             cancel: threading.Event) -> JobResult:
        def emit(item: _Item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def on_output(stream: str, chunk: bytes) -> None:
            emit((stream, chunk, time.monotonic()))  # coalesced on the loop, by arrival

        return executor.run_job(spec, on_output=on_output, cancel=cancel,
                                on_started=lambda: emit(spb.ExecuteEvent(
                                    started=spb.ExecuteEvent.Started())))

    def close(self) -> None:
        """Wait for jobs still running (cancelled ones tear down within seconds)."""
        self.pool.shutdown(wait=True)


# What the job's thread hands the loop: an event, or output with its arrival time.
_Item = spb.ExecuteEvent | tuple[str, bytes, float]


async def _stream(job: asyncio.Future[JobResult],
                  events: asyncio.Queue[_Item]) -> AsyncGenerator[spb.ExecuteEvent, None]:
    """The job's events until it ends, output coalesced. What is already queued is taken
    before a held partial line is flushed, so a busy loop does not split lines."""
    chunks = OutputCoalescer(flush_seconds=output_chunks.FLUSH_SECONDS)
    while True:
        while not events.empty():
            for event in _events(chunks, events.get_nowait()):
                yield event
        if job.done():
            break
        for event in _outputs(chunks.due(time.monotonic())):
            yield event
        deadline = chunks.deadline()
        getter = asyncio.ensure_future(events.get())
        waiting: set[asyncio.Future[Any]] = {getter, job}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED,
                               timeout=None if deadline is None else
                               max(0.0, deadline - time.monotonic()))
        finally:
            # The call may end here (client gone, server stopping): a getter left
            # pending outlives the loop and is finalized later, from whatever runs.
            got = getter.done()
            if not got:
                getter.cancel()
        if got:
            for event in _events(chunks, getter.result()):
                yield event
    for event in _outputs(chunks.flush()):
        yield event


def _outputs(chunks: list[Chunk]) -> list[spb.ExecuteEvent]:
    return [spb.ExecuteEvent(output=spb.ExecuteEvent.Output(stream=_STREAMS[stream],
                                                            data=data))
            for stream, data in chunks]


def _events(chunks: OutputCoalescer, item: _Item) -> list[spb.ExecuteEvent]:
    """Output goes through the coalescer; any other event first flushes what it holds."""
    if isinstance(item, spb.ExecuteEvent):
        return [*_outputs(chunks.flush()), item]
    stream, data, arrived = item
    return _outputs(chunks.feed(stream, data, arrived))
