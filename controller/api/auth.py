"""Bearer tokens: which calls carry `authorization: Bearer <token>` for a known token.

Every RPC needs one except the standard health check. The check runs on the call's
metadata only, before any of its body is read (see controller/api/edge.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

HEALTH_PREFIX = "/grpc.health.v1.Health/"
UNAUTHENTICATED_MESSAGE = ("missing or invalid bearer token: pass --token-file or set "
                           "BILEVEL_TOKEN to a token the server accepts")


class TokenCheck:
    """Accepts metadata carrying one of the configured tokens (constant-time compare)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("TokenCheck needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def valid(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        return self.matching(metadata) is not None

    def matching(self, metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
        """The configured token the metadata carries, or None."""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip().encode()
                    found = [t for t in self._tokens if hmac.compare_digest(given, t)]
                    return found[0] if found else None
        return None

    def allows(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        return method.startswith(HEALTH_PREFIX) or self.valid(metadata)


def client_identity(token: bytes | None, peer: str) -> str:
    """Who a call is from, for the per-client bounds (controller/api/admission.py): the
    configured token it carries (hashed), else its peer address without the port. Named
    principals replace this function."""
    if token is not None:
        return "token:" + hashlib.sha256(token).hexdigest()[:16]
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer
