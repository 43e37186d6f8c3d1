"""Every call recorded in the audit log (controller/audit/) before it acts and after it
ends: who (the principal the edge resolved), what (method, run and object ids), from
where (peer), how it ended (status code) and how many bytes went each way.

Installed after the EdgeInterceptor (controller/api/server.py): grpc.aio runs the first
interceptor's intercept_service first, and the edge wraps the handler this one returns,
so at call time the edge authenticates, admits and parses, sets the call's principal,
and only then calls in here. Calls the edge refuses (no valid token, no room, a body
over its cap or that does not parse) never reach a handler and are not recorded here.

Two records per call: a "request" record is written, and on disk, before the handler
runs; if it cannot be, the call is refused UNAVAILABLE and nothing is done (as Vault
refuses requests it cannot audit). A "response" record follows when the call ends, for
streams once the stream ends; if it cannot be written, a call that succeeded ends
UNAVAILABLE instead, its result withheld. Never recorded: request or response bodies,
metadata (tokens), or any field but the ids named in OBJECT_FIELDS.

Not audited: the standard health and reflection services (UNAUDITED), which neither
read nor change anything of a principal's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from controller.api.identity import caller
from controller.audit.chain import cut, timestamp
from controller.audit.log import AuditLog, AuditUnavailable

UNAUDITED = ("/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/",
             "/grpc.reflection.v1alpha.ServerReflection/")
# Request fields (strings) whose value names the object of a call, first match wins.
# An allow-list: no other field of a request is ever written to the log.
OBJECT_FIELDS = ("name", "principal", "task", "id", "volume")
RUN_MESSAGE = "bilevel.v1.Run"  # a response that is a run names the run (CreateRun)
log = structlog.get_logger(__name__)


class AuditInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[Any]],
            handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(UNAUDITED):
            return handler
        return _audited(handler, self.audit, method)


class _Record:
    """One call's two records."""

    def __init__(self, audit: AuditLog, method: str, context: Any) -> None:
        principal = caller()  # RuntimeError (the call fails) if the edge set none
        self.audit, self.context = audit, context
        self.fields: dict[str, Any] = {
            "principal": principal.name, "role": principal.role.value,
            "method": cut(method), "peer": cut(str(context.peer())), "run": "", "object": ""}
        self.started = time.monotonic()
        self.seq = 0
        self.bytes_in = 0

    async def begin(self, request: Any) -> None:
        """Write the request record, or refuse the call (UNAVAILABLE)."""
        run, obj = _ids(request)
        self.bytes_in = _size(request)
        self.fields.update(run=run, object=obj)
        try:
            record = await self._append({"phase": "request", "bytes_in": self.bytes_in})
        except AuditUnavailable as exc:
            await self.context.abort(grpc.StatusCode.UNAVAILABLE, (
                f"refused: the call could not be recorded, so it was not carried out: {exc}"))
            raise AssertionError("unreachable: abort raises") from None
        self.seq = record["seq"]

    async def end(self, code: grpc.StatusCode, bytes_out: int, response: Any = None) -> None:
        """Write the response record; for a call that succeeded, end it UNAVAILABLE when
        the record cannot be written."""
        descriptor = getattr(response, "DESCRIPTOR", None)
        if not self.fields["run"] and descriptor is not None and \
                descriptor.full_name == RUN_MESSAGE:
            self.fields["run"] = cut(response.id)
        try:
            await self._append({
                "phase": "response", "call": self.seq, "status": code.name,
                "bytes_in": self.bytes_in, "bytes_out": bytes_out,
                "ms": round((time.monotonic() - self.started) * 1000)})
        except AuditUnavailable as exc:
            if code is grpc.StatusCode.OK:
                await self.context.abort(grpc.StatusCode.UNAVAILABLE, (
                    f"the call was carried out but could not be recorded, so its result is "
                    f"withheld: {exc}"))
            # It failed anyway (or was cancelled): its status stands; the log keeps its
            # request record without a response.
            log.error("audit: the response record of a failed call was not written",
                      method=self.fields["method"], call=self.seq, status=code.name,
                      error=str(exc))

    async def _append(self, fields: dict[str, Any]) -> dict[str, Any]:
        # In a thread: the record is synced to disk. A cancel of this call stops the
        # wait, not the write.
        return await asyncio.to_thread(self.audit.append,
                                       {"time": timestamp(), **self.fields, **fields})


def _ids(request: Any) -> tuple[str, str]:
    """The run id and the object id a request names ("" for none)."""
    fields = request.DESCRIPTOR.fields_by_name if hasattr(request, "DESCRIPTOR") else {}

    def text(name: str) -> str:
        value = getattr(request, name) if name in fields else None
        return cut(value) if isinstance(value, str) else ""

    obj = next((value for value in map(text, OBJECT_FIELDS) if value), "")
    if not obj and "data_mounts" in fields:  # Execute: the data ids it mounts
        obj = cut(",".join(m.volume for m in request.data_mounts))
    return text("run_id"), obj


def _size(message: Any) -> int:
    return int(message.ByteSize()) if hasattr(message, "ByteSize") else len(message)


def _code(exc: BaseException, context: Any) -> grpc.StatusCode:
    """The status a call that raised `exc` ends with."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.UNKNOWN


def _ok(context: Any) -> grpc.StatusCode:
    """The status of a call that returned: OK unless the handler set another."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _audited(handler: Any, audit: AuditLog, method: str) -> Any:
    """`handler` with its call recorded: the same kind, serializers and parsers."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming:
        return _audited_request_stream(handler, audit, method, kwargs)
    if handler.response_streaming:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            record = _Record(audit, method, context)
            await record.begin(request)
            stream = inner_stream(request, context)
            del request  # the handler may drop it (Execute's files); so do we
            async for item in _sent(stream, record, context):
                yield item
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    inner_unary = handler.unary_unary

    async def unary_unary(request: Any, context: Any) -> Any:
        record = _Record(audit, method, context)
        await record.begin(request)
        call = inner_unary(request, context)
        del request
        try:
            response = await call if inspect.isawaitable(call) else call
        except BaseException as exc:
            await record.end(_code(exc, context), 0)
            raise
        await record.end(_ok(context), 0 if response is None else _size(response), response)
        return response
    return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)


def _audited_request_stream(handler: Any, audit: AuditLog, method: str,
                            kwargs: dict[str, Any]) -> Any:
    """Request-streaming methods: the request record counts no bytes in (none are read
    yet); the response record counts them all."""
    async def counted(requests: AsyncIterator[Any], record: _Record) -> AsyncIterator[Any]:
        async for request in requests:
            record.bytes_in += _size(request)
            yield request

    if handler.response_streaming:
        inner_streams = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Any) -> Any:
            record = _Record(audit, method, context)
            await record.begin(b"")
            async for item in _sent(inner_streams(counted(requests, record), context),
                                    record, context):
                yield item
        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
    inner = handler.stream_unary

    async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
        record = _Record(audit, method, context)
        await record.begin(b"")
        try:
            response = await inner(counted(requests, record), context)
        except BaseException as exc:
            await record.end(_code(exc, context), 0)
            raise
        await record.end(_ok(context), _size(response), response)
        return response
    return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)


async def _sent(stream: Any, record: _Record, context: Any) -> AsyncIterator[Any]:
    """The responses of a stream, counted; the response record when it ends."""
    sent = 0
    code = grpc.StatusCode.OK
    try:
        if inspect.isawaitable(stream):  # a handler that writes with context.write
            await stream
        elif hasattr(stream, "__aiter__"):
            async for item in stream:
                sent += _size(item)
                yield item
        else:  # a plain (sync) generator
            for item in stream:
                sent += _size(item)
                yield item
        code = _ok(context)
    except BaseException as exc:
        code = _code(exc, context)
        raise
    finally:
        await record.end(code, sent)
