"""Who is calling: a named principal with a role, and what each role may do.

A principal comes from a bearer token (stored hashed, controller/store/principals.py) or
from a verified mTLS client certificate's subject mapped to a principal by the operator.
The API edge resolves it before a request's body is read and holds it in `CURRENT` for
the call (controller/api/identity.py); servicers and the run manager read it from there
or take it as an argument. Everything a principal creates (runs with their events,
artifacts and task copies, Execute jobs, published data ids, lessons) carries its name
as the owner; another principal sees NOT_FOUND, as if the object did not exist, unless
it is an admin.
"""

from __future__ import annotations

import contextvars
import enum
import re
from dataclasses import dataclass

NAME = re.compile(r"[a-z][a-z0-9._-]{0,62}")


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything, every principal's objects
    USER = "user"  # create, read, change and delete its own objects
    VIEWER = "viewer"  # read its own objects


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def sees(self, owner: str) -> bool:
        """May read an object owned by `owner`."""
        return self.role is Role.ADMIN or owner == self.name

    def changes(self, owner: str) -> bool:
        """May create, change or delete an object owned by `owner`."""
        return self.role is Role.ADMIN or (self.role is Role.USER and owner == self.name)

    @property
    def sees_everyone(self) -> bool:
        """Sees every principal's objects (an admin): lists are not filtered by owner."""
        return self.role is Role.ADMIN

    @property
    def writes(self) -> bool:
        """May create objects at all (a viewer may not)."""
        return self.role is not Role.VIEWER


def check_name(name: str) -> str:
    """A principal's name: lower-case letters, digits, '.', '_', '-' (it becomes a label
    value and a path component), starting with a letter; ValueError otherwise."""
    if not NAME.fullmatch(name):
        raise ValueError(f"principal name {name!r}: use 1-63 of a-z 0-9 . _ -, starting "
                         "with a letter")
    return name


def check_new_name(name: str) -> str:
    """The name of a principal an operator creates: check_name's, and none of the
    built-in principals' (RESERVED)."""
    check_name(name)
    if name in RESERVED:
        raise ValueError(f"principal name {name!r} is built in ({', '.join(sorted(RESERVED))}"
                         "); choose another name")
    return name


class PermissionDenied(Exception):
    """The caller may see the object but its role does not allow the action (a viewer
    that cancels its own run, a user that lists every principal). Never raised for
    another principal's object: that is NOT_FOUND."""

    def __init__(self, principal: Principal, action: str) -> None:
        super().__init__(f"principal {principal.name!r} has role {principal.role.value}, "
                         f"which may not {action}")
        self.principal = principal
        self.action = action


def require_writes(principal: Principal, action: str) -> None:
    """PermissionDenied unless the principal may create objects at all."""
    if not principal.writes:
        raise PermissionDenied(principal, action)


def require_admin(principal: Principal, action: str) -> None:
    """PermissionDenied unless the principal is an admin."""
    if principal.role is not Role.ADMIN:
        raise PermissionDenied(principal, action)


# The principal that owns what existed before principals did, and that the single shared
# token of a deployment configured with `server.tokens` / BILEVEL_TOKEN maps to.
SHARED = Principal("shared", Role.ADMIN)
# The owner of an embedded controller (a local command's own, reachable only by its
# user through a private Unix socket).
LOCAL = Principal("local", Role.ADMIN)
# The controller acting on its own: retention deleting expired runs, runs resumed after
# a restart.
CONTROLLER = Principal("controller", Role.ADMIN)
RESERVED = frozenset({SHARED.name, LOCAL.name, CONTROLLER.name})

CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "bilevel_principal", default=None)
