"""Bearer-token authentication for every RPC except the standard health check."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call with UNAUTHENTICATED unless it carries `authorization: Bearer <t>`
    for one of the configured tokens (compared in constant time)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def _valid(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip().encode()
                    return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[Any]],
            handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith(HEALTH_PREFIX) or self._valid(
                handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _denying(handler)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "missing or invalid bearer token: pass --token-file or set "
                        "BILEVEL_TOKEN to a token the server accepts")


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await _deny(request, context)
    yield  # pragma: no cover - makes this an async generator


def _denying(handler: Any) -> Any:
    """A handler of the same kind as `handler` that only refuses."""
    if handler is None:
        return None
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)
