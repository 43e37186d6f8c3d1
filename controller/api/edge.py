"""The API edge: who may call, how large a request may be, what the server takes on at
once, and what bad bytes get.

Every method's handler is swapped for a request-streaming one that reads the body
itself (grpc hands it raw bytes), so that:

- the caller is resolved to a principal (controller/api/auth.py) from the call's
  metadata and transport, and held in `principals.CURRENT` for the whole call (the
  handler, its stream and the threads it starts: controller/api/identity.py); a call
  that names none is refused UNAUTHENTICATED before any of its body is read or parsed:
  HTTP/2 flow control stops the sender at its window, so a tokenless 280 MB request
  costs the server kilobytes, not the message twice over;
- a streaming call (WatchRun, Execute, health Watch, reflection) takes a place in the
  stream budget for its whole life, per principal and in all (controller/api/admission.py),
  or is RESOURCE_EXHAUSTED at once naming the cap; grpc's own cap on concurrent RPCs is
  the stream budget plus UNARY_RPCS, so idle streams never shut out unary calls;
- a large-body call (Execute, CreateRun) is admitted before its body is read: an Execute
  place must be free (checked at once), and when its turn to be read comes its bytes
  (declared, else its method's cap) must fit the server's budget of body bytes in
  flight; else RESOURCE_EXHAUSTED, the body unread;
- a body over its method's cap is RESOURCE_EXHAUSTED naming the cap (only Execute,
  which carries job files, may be large; see METHOD_CAPS);
- bytes that do not parse as the method's message are INVALID_ARGUMENT (grpc's own
  deserializer would fail the call as UNKNOWN);
- at most LARGE_READS bodies of large-cap methods are read and parsed at once.
  (Each costs about three times its size while it is parsed and converted.)

Server options (server_options) bound the rest: message size, streams per connection,
metadata size and idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from controller import principals
from controller.api.admission import (
    CURRENT,
    DECLARED_BYTES,
    MAX_MESSAGE_BYTES,
    Admission,
    ByteBudget,
    StreamBudget,
    Ticket,
)
from controller.api.auth import (
    HEALTH_PREFIX,
    UNAUTHENTICATED_MESSAGE,
    Authenticator,
    client_identity,
)
from controller.api.errors import bad_request, status_for, too_large
from controller.errors import FieldError
from controller.principals import Principal
from controller.research.errors import CapacityError
from controller.store.task_bundle import MAX_BUNDLE_BYTES

MAX_SEND_BYTES = 300 << 20  # responses (returned files, artifacts): unchanged
DEFAULT_CAP_BYTES = 64 << 10
METHOD_CAPS: Mapping[str, int] = {
    "/bilevel.v1.SandboxService/Execute": MAX_MESSAGE_BYTES,
    # train.py (1 MiB), mechanism sources and a task directory (store/task_bundle.py)
    "/bilevel.v1.RunService/CreateRun": (8 << 20) + MAX_BUNDLE_BYTES,
}
LARGE_CAP_BYTES = 1 << 20  # methods with a cap above this share the LARGE_READS bound
LARGE_READS = 2
MAX_CONCURRENT_STREAMS = 100  # per client connection (HTTP/2 advises at least 100)
UNARY_RPCS = 256  # grpc's concurrency cap is the stream budget plus this many
MAX_METADATA_BYTES = 16 << 10
MAX_CONNECTION_IDLE_MS = 10 * 60 * 1000


def server_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS)]


def max_concurrent_rpcs(max_streams: int) -> int:
    """grpc's maximum_concurrent_rpcs: every stream the budget allows (max_streams), and
    room for UNARY_RPCS unary calls beside them."""
    return max_streams + UNARY_RPCS


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Installed on every server. `auth` resolves each call's principal (a call without
    a token is its owner's only over the private Unix socket: auth.tokenless_principal).

    `gates`: per method, the places a large-body call of it must find free before its
    body is read (Execute: the sandbox slots and queue)."""

    def __init__(self, auth: Authenticator, streams: StreamBudget, bodies: ByteBudget,
                 gates: Mapping[str, Admission], caps: Mapping[str, int] = METHOD_CAPS,
                 default_cap: int = DEFAULT_CAP_BYTES) -> None:
        self.auth = auth
        self._caps = caps
        self._default_cap = default_cap
        self._large = asyncio.Semaphore(LARGE_READS)
        self.streams, self.bodies, self.gates = streams, bodies, gates

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[Any]],
            handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        cap = self._caps.get(method, self._default_cap)
        large = cap > LARGE_CAP_BYTES
        body = _Body(method, cap, handler.request_deserializer,
                     self._large if large else None)
        streaming = bool(handler.request_streaming or handler.response_streaming)
        return _guarded(handler, body, _Call(self, method, metadata, cap, streaming,
                                             large and not handler.request_streaming))


class _Call:
    """One call's principal and admission: its stream place and, for a large body, its
    ticket."""

    def __init__(self, edge: EdgeInterceptor, method: str,
                 metadata: Sequence[tuple[str, Any]] | None, cap: int, streaming: bool,
                 large: bool) -> None:
        self.edge, self.method, self.metadata, self.cap = edge, method, metadata, cap
        self.streaming, self.large = streaming, large

    async def authenticate(self, context: Any) -> Principal | None:
        """The caller's principal, read from metadata and transport only; a call that
        needs one and names none is refused here, its body unread (None is left only for
        a health call without a token)."""
        principal = self.edge.auth.principal(self.metadata, context.auth_context(),
                                             context.peer())
        if principal is None and not self.method.startswith(HEALTH_PREFIX):
            await _unauthenticated(context)
        return principal

    @contextlib.asynccontextmanager
    async def admitted(self, context: Any,
                       principal: Principal | None) -> AsyncIterator[Ticket | None]:
        """Holds the call's principal and places for its life; refuses at once when a
        place is full."""
        # Each call runs in its own task, with its own copy of the context.
        principals.CURRENT.set(principal)
        try:
            async with self._places(context, principal) as ticket:
                yield ticket
        finally:
            principals.CURRENT.set(None)

    @contextlib.asynccontextmanager
    async def _places(self, context: Any,
                      principal: Principal | None) -> AsyncIterator[Ticket | None]:
        if not (self.streaming or self.large):
            yield None
            return
        edge = self.edge
        client = client_identity(principal, context.peer()) if self.streaming else None
        ticket = None
        try:
            if client is not None:
                edge.streams.enter(client)
            try:
                ticket = self._ticket() if self.large else None
            except BaseException:
                if client is not None:
                    edge.streams.leave(client)
                raise
        except (CapacityError, FieldError) as exc:
            await _Body.abort(context, _status(exc))
        CURRENT.set(ticket)
        try:
            yield ticket
        finally:
            CURRENT.set(None)
            if client is not None:
                edge.streams.leave(client)
            if ticket is not None:
                ticket.call_ended()

    def _ticket(self) -> Ticket:
        declared = self._declared()
        return Ticket(self.edge.bodies, self.cap if declared is None else declared,
                      declared is not None, self.edge.gates.get(self.method))

    def _declared(self) -> int | None:
        value = next((v for k, v in self.metadata or () if k == DECLARED_BYTES), None)
        if value is None:
            return None
        if not isinstance(value, str) or not value.isdigit() or int(value) > self.cap:
            raise FieldError(f"metadata {DECLARED_BYTES}", (
                f"must be the request's size in bytes, at most {self.cap} for "
                f"{self.method}; got {str(value)[:40]!r}"))
        return int(value)


def _status(exc: CapacityError | FieldError) -> Any:
    status = status_for(exc)
    assert status is not None  # both are domain errors with a status
    return status


async def _unauthenticated(context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


class _Body:
    """Reads, size-checks and parses request messages of one call."""

    def __init__(self, method: str, cap: int, parse: Callable[[bytes], Any] | None,
                 bound: asyncio.Semaphore | None) -> None:
        self.method, self.cap, self.parse, self.bound = method, cap, parse, bound

    async def one(self, requests: AsyncIterator[bytes], context: Any,
                  ticket: Ticket | None) -> Any:
        """The single message of a unary-request call; a large one is charged its size."""
        raw: bytes | None = None
        async with self.bound or contextlib.nullcontext():
            if ticket is not None:
                try:
                    ticket.reserve()
                except CapacityError as exc:
                    await self.abort(context, _status(exc))
            with contextlib.suppress(StopAsyncIteration):
                raw = await anext(aiter(requests))
            if raw is None:
                await self.abort(context, bad_request("request", "no request message"))
                raise AssertionError("unreachable: abort raises")
            if ticket is not None:
                try:
                    ticket.observed(len(raw))
                except CapacityError as exc:
                    del raw
                    await self.abort(context, _status(exc))
            return await self.parsed(raw, context)

    async def each(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in requests:
            yield await self.parsed(raw, context)

    async def parsed(self, raw: bytes, context: Any) -> Any:
        if len(raw) > self.cap:
            await self.abort(context, too_large(self.method, len(raw), self.cap))
        try:
            return self._parse(raw)
        except Exception as exc:  # any failure of a pure parser is the sender's bytes
            await self.abort(context, bad_request(
                "request", f"not a valid message for {self.method}: "
                f"{type(exc).__name__}: {exc}"[:500]))

    def _parse(self, raw: bytes) -> Any:
        return raw if self.parse is None else self.parse(raw)

    @staticmethod
    async def abort(context: Any, status: Any) -> None:
        await context.abort_with_status(rpc_status.to_status(status))


def _guarded(handler: Any, body: _Body, call: _Call) -> Any:
    """`handler` behind `body` and `call`'s admission: same response kind, request stream
    read by us."""
    kwargs = {"response_serializer": handler.response_serializer}
    if not handler.request_streaming:
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
                principal = await call.authenticate(context)
                async with call.admitted(context, principal) as ticket:
                    stream = inner_stream(await body.one(requests, context, ticket), context)
                    async for item in _iterate(stream):  # no reference to the request here
                        yield item
            return grpc.stream_stream_rpc_method_handler(unary_stream, **kwargs)
        inner_unary = handler.unary_unary

        async def unary_unary(requests: AsyncIterator[bytes], context: Any) -> Any:
            principal = await call.authenticate(context)
            async with call.admitted(context, principal) as ticket:
                return await _resolve(inner_unary(await body.one(requests, context, ticket),
                                                  context))
        return grpc.stream_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.response_streaming:
        inner_streams = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
            principal = await call.authenticate(context)
            async with call.admitted(context, principal):
                async for item in _iterate(inner_streams(body.each(requests, context),
                                                         context)):
                    yield item
        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
    inner = handler.stream_unary

    async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> Any:
        principal = await call.authenticate(context)
        async with call.admitted(context, principal):
            return await _resolve(inner(body.each(requests, context), context))
    return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)


async def _resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _iterate(result: Any) -> AsyncIterator[Any]:
    if inspect.isawaitable(result):  # a coroutine that writes with context.write (health)
        await result
        return
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:  # a plain (sync) generator
        for item in result:
            yield item
