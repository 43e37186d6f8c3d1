"""The API edge: who may call, how large a request may be, and what bad bytes get.

Every method's handler is swapped for a request-streaming one that reads the body
itself (grpc hands it raw bytes), so that:

- a call without a valid token is refused UNAUTHENTICATED before any of its body is
  read or parsed: HTTP/2 flow control stops the sender at its window, so a tokenless
  280 MB request costs the server kilobytes, not the message twice over;
- a body over its method's cap is RESOURCE_EXHAUSTED naming the cap (only Execute,
  which carries job files, may be large; see METHOD_CAPS);
- bytes that do not parse as the method's message are INVALID_ARGUMENT (grpc's own
  deserializer would fail the call as UNKNOWN);
- at most LARGE_READS bodies of large-cap methods are read and parsed at once.
  (Each costs about three times its size while it is parsed and converted.)

Server options (server_options) bound the rest: message size, streams per connection,
concurrent RPCs, metadata size and idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from controller.api.auth import UNAUTHENTICATED_MESSAGE, TokenCheck
from controller.api.errors import bad_request, too_large
from controller.store.task_bundle import MAX_BUNDLE_BYTES

MAX_MESSAGE_BYTES = 257 << 20  # the transport's cap: Execute's 256 MiB of files (JobSpec)
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
MAX_CONCURRENT_RPCS = 256  # per server; more get RESOURCE_EXHAUSTED at once
MAX_METADATA_BYTES = 16 << 10
MAX_CONNECTION_IDLE_MS = 10 * 60 * 1000

# Test-only switch (the sensitivity twin in tests/test_api_edge.py): False reads and
# parses an unauthenticated body before refusing it, as the server did before. Never set
# from configuration.
_REFUSE_BEFORE_READ = True


def server_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS)]


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Installed on every server; with no tokens it checks size and parsing only
    (a token-less server binds to loopback, see ServerConfig.bind_address)."""

    def __init__(self, tokens: Sequence[str] = (),
                 caps: Mapping[str, int] = METHOD_CAPS,
                 default_cap: int = DEFAULT_CAP_BYTES) -> None:
        self._check = TokenCheck(tokens) if tokens else None
        self._caps = caps
        self._default_cap = default_cap
        self._large = asyncio.Semaphore(LARGE_READS)

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[Any]],
            handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        allowed = self._check is None or self._check.allows(
            method, handler_call_details.invocation_metadata)
        if not allowed and _REFUSE_BEFORE_READ:
            return _refusing(handler)
        cap = self._caps.get(method, self._default_cap)
        body = _Body(method, cap, handler.request_deserializer,
                     self._large if cap > LARGE_CAP_BYTES else None, refuse=not allowed)
        return _guarded(handler, body)


async def _unauthenticated(context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def _refusing(handler: Any) -> Any:
    """A handler that refuses without reading the request stream at all."""
    async def refuse(requests: AsyncIterator[bytes], context: Any) -> None:
        await _unauthenticated(context)

    async def refuse_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
        await _unauthenticated(context)
        yield  # pragma: no cover - makes this an async generator

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            refuse_stream, response_serializer=handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(
        refuse, response_serializer=handler.response_serializer)


class _Body:
    """Reads, size-checks and parses request messages of one call."""

    def __init__(self, method: str, cap: int, parse: Callable[[bytes], Any] | None,
                 bound: asyncio.Semaphore | None, refuse: bool) -> None:
        self.method, self.cap, self.parse, self.bound = method, cap, parse, bound
        self.refuse = refuse

    async def one(self, requests: AsyncIterator[bytes], context: Any) -> Any:
        """The single message of a unary-request call."""
        raw: bytes | None = None
        async with self.bound or contextlib.nullcontext():
            with contextlib.suppress(StopAsyncIteration):
                raw = await anext(aiter(requests))
            if raw is None:
                await self._abort(context, bad_request("request", "no request message"))
                raise AssertionError("unreachable: abort raises")
            return await self.parsed(raw, context)

    async def each(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in requests:
            yield await self.parsed(raw, context)

    async def parsed(self, raw: bytes, context: Any) -> Any:
        if self.refuse:  # only with _REFUSE_BEFORE_READ off: parse, then refuse
            self._parse(raw)
            await _unauthenticated(context)
        if len(raw) > self.cap:
            await self._abort(context, too_large(self.method, len(raw), self.cap))
        try:
            return self._parse(raw)
        except Exception as exc:  # any failure of a pure parser is the sender's bytes
            await self._abort(context, bad_request(
                "request", f"not a valid message for {self.method}: "
                f"{type(exc).__name__}: {exc}"[:500]))

    def _parse(self, raw: bytes) -> Any:
        return raw if self.parse is None else self.parse(raw)

    @staticmethod
    async def _abort(context: Any, status: Any) -> None:
        await context.abort_with_status(rpc_status.to_status(status))


def _guarded(handler: Any, body: _Body) -> Any:
    """`handler` behind `body`: same response kind, request stream read by us."""
    kwargs = {"response_serializer": handler.response_serializer}
    if not handler.request_streaming:
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
                stream = inner_stream(await body.one(requests, context), context)
                async for item in _iterate(stream):  # no reference to the request kept here
                    yield item
            return grpc.stream_stream_rpc_method_handler(unary_stream, **kwargs)
        inner_unary = handler.unary_unary

        async def unary_unary(requests: AsyncIterator[bytes], context: Any) -> Any:
            return await _resolve(inner_unary(await body.one(requests, context), context))
        return grpc.stream_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.response_streaming:
        inner_streams = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
            async for item in _iterate(inner_streams(body.each(requests, context), context)):
                yield item
        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
    inner = handler.stream_unary

    async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> Any:
        return await _resolve(inner(body.each(requests, context), context))
    return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)


async def _resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _iterate(result: Any) -> AsyncIterator[Any]:
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:  # a plain (sync) generator
        for item in result:
            yield item
