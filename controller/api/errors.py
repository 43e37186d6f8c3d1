"""Domain errors -> gRPC status codes with google.rpc rich details.

User-code failures never get here: they are results. These are service problems, each
with a precise code and details a client can act on (which field, which resource, which
limit).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from controller.errors import FieldError
from controller.principals import PermissionDenied
from controller.research.errors import CapacityError, StateConflict
from controller.sandbox.backend_config import SandboxBusy, SandboxUnavailable
from controller.store.artifacts import BadArtifactName
from controller.store.principals import PrincipalExists, UnknownPrincipal
from controller.store.records import NotFoundError

DOMAIN = "bilevel.dev"
F = TypeVar("F", bound=Callable[..., Any])


def _status(code: int, message: str, *details: Any) -> status_pb2.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=code, message=message, details=packed)


def bad_request(field: str, reason: str) -> status_pb2.Status:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=reason)
    return _status(code_pb2.INVALID_ARGUMENT, f"{field}: {reason}",
                   error_details_pb2.BadRequest(field_violations=[violation]))


def too_large(method: str, size: int, cap: int) -> status_pb2.Status:
    """A request body over its method's cap (controller/api/edge.py)."""
    text = (f"request of {size} bytes exceeds the {cap} byte cap of {method}; only "
            "Execute takes large requests")
    violation = error_details_pb2.QuotaFailure.Violation(subject="request_bytes",
                                                         description=text)
    return _status(code_pb2.RESOURCE_EXHAUSTED, text,
                   error_details_pb2.QuotaFailure(violations=[violation]))


def status_for(exc: BaseException) -> status_pb2.Status | None:
    """The status for a known domain error; None for anything else (a bug: INTERNAL)."""
    if isinstance(exc, FieldError):  # SpecError and TaskError too
        return bad_request(exc.field, exc.reason)
    if isinstance(exc, BadArtifactName):
        return bad_request("name", str(exc))
    if isinstance(exc, NotFoundError):
        return _status(code_pb2.NOT_FOUND, str(exc), error_details_pb2.ResourceInfo(
            resource_type=exc.resource, resource_name=exc.name, description=exc.hint))
    if isinstance(exc, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, str(exc), error_details_pb2.ErrorInfo(
            reason="ROLE", domain=DOMAIN, metadata={"role": exc.principal.role.value}))
    if isinstance(exc, PrincipalExists):
        return _status(code_pb2.ALREADY_EXISTS, str(exc), error_details_pb2.ResourceInfo(
            resource_type="principal", resource_name=exc.name))
    if isinstance(exc, UnknownPrincipal):
        if exc.in_file:
            violation = error_details_pb2.PreconditionFailure.Violation(
                type="PRINCIPALS_FILE", subject=f"principal {exc.name}", description=str(exc))
            return _status(code_pb2.FAILED_PRECONDITION, str(exc),
                           error_details_pb2.PreconditionFailure(violations=[violation]))
        return _status(code_pb2.NOT_FOUND, str(exc), error_details_pb2.ResourceInfo(
            resource_type="principal", resource_name=exc.name))
    if isinstance(exc, StateConflict):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="STATE", subject=exc.subject, description=str(exc))
        return _status(code_pb2.FAILED_PRECONDITION, str(exc),
                       error_details_pb2.PreconditionFailure(violations=[violation]))
    if isinstance(exc, CapacityError | SandboxBusy):
        subject = exc.resource if isinstance(exc, CapacityError) else "sandbox_slots"
        violation = error_details_pb2.QuotaFailure.Violation(subject=subject,
                                                             description=str(exc))
        return _status(code_pb2.RESOURCE_EXHAUSTED, str(exc),
                       error_details_pb2.QuotaFailure(violations=[violation]))
    if isinstance(exc, SandboxUnavailable):
        return _status(code_pb2.UNAVAILABLE, str(exc), error_details_pb2.ErrorInfo(
            reason="SANDBOX_UNAVAILABLE", domain=DOMAIN))
    return None


async def abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    await context.abort_with_status(rpc_status.to_status(status))


def rpc_errors(fn: F) -> F:
    """Wrap a servicer method (coroutine or async generator) so domain errors become
    their status codes."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            items = fn(self, request, context)
            del request  # the handler may drop a large request (Execute) once converted
            try:
                async for item in items:
                    yield item
            except Exception as exc:
                status = status_for(exc)
                if status is None:
                    raise
                await abort(context, status)
        return cast(F, stream)

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            status = status_for(exc)
            if status is None:
                raise
            await abort(context, status)
    return cast(F, unary)


def details_of(error: grpc.aio.AioRpcError) -> list[Any]:
    """Client side: the rich details a server attached to an error, unpacked."""
    raw = next((v for k, v in (error.trailing_metadata() or ())
                if k == "grpc-status-details-bin"), None)
    if raw is None:
        return []
    status = status_pb2.Status.FromString(raw)
    out: list[Any] = []
    for item in status.details:
        for cls in (error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
                    error_details_pb2.PreconditionFailure, error_details_pb2.QuotaFailure,
                    error_details_pb2.ErrorInfo):
            if item.Is(cls.DESCRIPTOR):
                msg = cls()
                item.Unpack(msg)
                out.append(msg)
    return out


def describe(error: grpc.aio.AioRpcError) -> str:
    """One line for a person: the code, the message and any field violations."""
    text = f"{error.code().name}: {error.details()}"
    for detail in details_of(error):
        if isinstance(detail, error_details_pb2.BadRequest):
            for v in detail.field_violations:
                if v.field not in (error.details() or ""):
                    text += f"\n  field {v.field}: {v.description}"
    return text
