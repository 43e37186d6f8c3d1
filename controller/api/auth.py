"""Bearer tokens: which calls carry `authorization: Bearer <token>` for a known token.

Every RPC needs one except the standard health check. The check runs on the call's
metadata only, before any of its body is read (see controller/api/edge.py).
"""

from __future__ import annotations

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
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip().encode()
                    return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    def allows(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        return method.startswith(HEALTH_PREFIX) or self.valid(metadata)
