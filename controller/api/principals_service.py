"""PrincipalService: who the caller is, and the admin's tokens (create, list, revoke).

A change goes to the state dir's store, which the edge reads on every call: a revoked
token is refused on its next call, here or through `bilevel token revoke` on the
state dir (controller/commands/token.py).
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from google.protobuf import timestamp_pb2

from controller.api.errors import rpc_errors
from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.api.gen.bilevel.v1 import principals_pb2_grpc
from controller.api.identity import caller
from controller.errors import FieldError
from controller.principals import LOCAL, SHARED, Principal, Role, check_name, require_admin
from controller.store.directory import Directory
from controller.store.principals import PrincipalExists, PrincipalRow

log = structlog.get_logger(__name__)
ROLES = {Role.ADMIN: ppb.ROLE_ADMIN, Role.USER: ppb.ROLE_USER, Role.VIEWER: ppb.ROLE_VIEWER}
BUILT_IN = {SHARED.name: "shared", LOCAL.name: "local"}


def role_of(value: int) -> Role:
    """A request's role; FieldError for ROLE_UNSPECIFIED or an unknown number."""
    for role, number in ROLES.items():
        if number == value:
            return role
    raise FieldError("role", "is required: ROLE_ADMIN, ROLE_USER or ROLE_VIEWER")


def message(row: PrincipalRow) -> ppb.Principal:
    out = ppb.Principal(name=row.name, role=ROLES[row.role], source=row.source)
    if row.created_at:
        out.created_at.CopyFrom(_ts(row.created_at))
    return out


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class PrincipalServicer(principals_pb2_grpc.PrincipalServiceServicer):
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    @rpc_errors
    async def WhoAmI(self, request: ppb.WhoAmIRequest,
                     context: grpc.aio.ServicerContext) -> ppb.Principal:
        principal = caller()
        source = BUILT_IN.get(principal.name)
        if source is None:
            rows = await asyncio.to_thread(self.directory.rows)
            found = [r for r in rows if r.name == principal.name]
            if found:
                return message(found[0])
            source = "store"
        return ppb.Principal(name=principal.name, role=ROLES[principal.role], source=source)

    @rpc_errors
    async def CreateToken(self, request: ppb.CreateTokenRequest,
                          context: grpc.aio.ServicerContext) -> ppb.CreateTokenResponse:
        admin = _admin("create tokens")
        role = role_of(request.role)
        try:
            token = await asyncio.to_thread(self.directory.create, request.name, role)
        except PrincipalExists:
            raise
        except ValueError as exc:  # the name
            raise FieldError("name", str(exc)) from None
        log.info("token created", principal=request.name, role=role.value, by=admin.name)
        rows = await asyncio.to_thread(self.directory.rows)
        row = next(r for r in rows if r.name == request.name)
        return ppb.CreateTokenResponse(principal=message(row), token=token)

    @rpc_errors
    async def ListPrincipals(self, request: ppb.ListPrincipalsRequest,
                             context: grpc.aio.ServicerContext) -> ppb.ListPrincipalsResponse:
        _admin("list principals")
        rows = await asyncio.to_thread(self.directory.rows)
        return ppb.ListPrincipalsResponse(principals=[message(r) for r in rows])

    @rpc_errors
    async def RevokeToken(self, request: ppb.RevokeTokenRequest,
                          context: grpc.aio.ServicerContext) -> ppb.RevokeTokenResponse:
        admin = _admin("revoke tokens")
        try:
            check_name(request.name)
        except ValueError as exc:
            raise FieldError("name", str(exc)) from None
        await asyncio.to_thread(self.directory.revoke, request.name)
        log.info("token revoked", principal=request.name, by=admin.name)
        return ppb.RevokeTokenResponse(name=request.name)


def _admin(action: str) -> Principal:
    principal = caller()
    require_admin(principal, action)
    return principal
