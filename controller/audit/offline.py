"""A change made to a state dir without a controller (`bilevel delete` when none holds
it), recorded as the audit interceptor records an RPC: a request record before it acts,
a response record after, in the same chain. The caller holds the state dir's lock, so no
controller writes the log meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit.chain import AUDIT_DIR, cut, timestamp
from controller.audit.log import AuditLog
from controller.principals import Principal

PEER = "local"  # no network: the state dir itself


@dataclass
class Outcome:
    bytes_out: int = 0  # set by the caller once it has its response


@contextmanager
def recorded(state_dir: Path, principal: Principal, method: str, run: str,
             bytes_in: int) -> Iterator[Outcome]:
    """Raises AuditCorrupt (a cut or edited log) or AuditUnavailable before the body
    runs, which then must not act."""
    audit = AuditLog(state_dir / AUDIT_DIR)
    fields: dict[str, Any] = {"principal": principal.name, "role": principal.role.value,
                              "method": method, "peer": PEER, "run": cut(run), "object": ""}
    try:
        seq = audit.append({"time": timestamp(), **fields, "phase": "request",
                            "bytes_in": bytes_in})["seq"]
        outcome = Outcome()
        status = "UNKNOWN"
        try:
            yield outcome
            status = "OK"
        except Exception as exc:
            status = _status(exc)
            raise
        finally:
            audit.append({"time": timestamp(), **fields, "phase": "response", "call": seq,
                          "status": status, "bytes_in": bytes_in,
                          "bytes_out": outcome.bytes_out})
    finally:
        audit.close()


def _status(exc: Exception) -> str:
    """The gRPC status name the error would have had over the API."""
    from google.rpc import code_pb2

    from controller.api.errors import status_for

    status = status_for(exc)
    return "UNKNOWN" if status is None else code_pb2.Code.Name(status.code)
