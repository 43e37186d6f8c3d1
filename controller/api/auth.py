"""Who a call is from: the principal its bearer token or client certificate names.

Every RPC needs one except the standard health check. The edge (controller/api/edge.py)
asks `Authenticator.principal` with the call's metadata and its transport's auth
context only, before any of its body is read:

- `authorization: Bearer <token>`: one of the server's shared tokens (server.tokens,
  $BILEVEL_TOKEN: principal "shared", an admin: one operator's own tokens),
  else a principal's token in the state dir's store or the principals file, looked up
  afresh on each call (a revoked token fails its very next call); an unknown token is
  refused, whatever else the call carries;
- no token, over mutual TLS: the verified client certificate's subject CN, when
  auth.certificates maps it to a principal that exists now;
- neither: `tokenless_principal` decides by the listener: over the controller's
  private Unix socket the caller is its owner (LOCAL), over TCP nobody.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from controller.api.private_socket import is_private
from controller.principals import LOCAL, SHARED, Principal
from controller.store.directory import Directory

HEALTH_PREFIX = "/grpc.health.v1.Health/"
UNAUTHENTICATED_MESSAGE = ("missing or invalid bearer token: pass --token-file or set "
                           "BILEVEL_TOKEN to a token the server accepts")
CERT_SUBJECT = "x509_common_name"  # grpc's auth context key of a verified peer's CN


def bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The bearer token the metadata carries ("" for a malformed one), None for none."""
    for key, value in metadata or ():
        if key == "authorization":
            if not isinstance(value, str):
                return ""
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def tokenless_principal(peer: str) -> Principal | None:
    """The principal of a call that carries no token and no mapped certificate, by the
    listener it came through (`peer`, grpc's): the controller's private Unix socket
    (0600 in a 0700 directory, controller/api/private_socket.py) reaches only the
    controller's own uid, which owns the state dir anyway: LOCAL. Over TCP: none
    (UNAUTHENTICATED); TCP is served only where calls authenticate
    (ServerConfig.tcp_address)."""
    return LOCAL if is_private(peer) else None


class Authenticator:
    """Resolves calls to principals. `certificates`: subject CN -> principal name, for a
    server that requires client certificates."""

    def __init__(self, shared_tokens: Sequence[str], directory: Directory,
                 certificates: Mapping[str, str] | None = None) -> None:
        self._shared = [t.encode() for t in shared_tokens]
        self.directory = directory
        self.certificates = dict(certificates or {})

    def principal(self, metadata: Sequence[tuple[str, Any]] | None,
                  auth_context: Mapping[str, Sequence[bytes]] | None,
                  peer: str) -> Principal | None:
        """The caller, or None: refuse it UNAUTHENTICATED. `peer`: grpc's name of the
        connection's other end (`unix:...` over the private socket)."""
        token = bearer(metadata)
        if token is not None:
            return self._by_token(token) if token else None
        if self.certificates and auth_context:
            subjects = auth_context.get(CERT_SUBJECT) or ()
            if len(subjects) == 1:
                name = self.certificates.get(subjects[0].decode(errors="replace"))
                return self.directory.by_name(name) if name else None
        return tokenless_principal(peer)

    def _by_token(self, token: str) -> Principal | None:
        given = token.encode()
        # Every shared token is compared, in constant time, whichever matches.
        shared = [hmac.compare_digest(given, t) for t in self._shared]
        if any(shared):
            return SHARED
        return self.directory.by_token(token)


def client_identity(principal: Principal | None, peer: str) -> str:
    """Who a call is from, for the per-client bounds (controller/api/admission.py): its
    principal's name, else (a health call without a token) its peer address without the
    port. Principal names hold no ':', so the two never meet."""
    if principal is not None:
        return principal.name
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer
