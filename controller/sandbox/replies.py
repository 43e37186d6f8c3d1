"""A mechanism session's replies, whatever backend runs the session: one JSON line per
call, parsed with caps on size and depth, or the death the session earns.

Every failure of the sandbox - a call past its time limit, death (OOM or otherwise), a
flood of output, a reply that is not the protocol - ends the session with `SessionDead`;
nothing is retried. A failure *reported* by the code inside (an exception it raised) is
a normal `Reply` with `ok=False`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from controller.sandbox import bounded_json, job_output
from controller.sandbox.bounded_json import Caps, JSONLimitError
from controller.sandbox.spec import ExceptionInfo

MAX_LINE_BYTES = 1 << 20
# A reply is state, history or proposals: deep nesting or huge strings are an attack.
REPLY_CAPS = Caps(max_bytes=MAX_LINE_BYTES, max_depth=32, max_str=256 << 10,
                  max_items=100_000)


class DeathReason(enum.StrEnum):
    """Why a session ended against its will."""

    TIMEOUT = "timeout"
    OOM = "oom"
    DIED = "died"
    OUTPUT_LIMIT = "output_limit"
    PROTOCOL = "protocol"
    SANDBOX_ERROR = "sandbox_error"


class SessionDead(RuntimeError):
    """The session is gone; `reason` says why and `stderr` holds what it last printed."""

    def __init__(self, reason: DeathReason, detail: str, stderr: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stderr = stderr


@dataclass(frozen=True)
class Reply:
    """One answer. `ok=False` carries the exception the code inside reported."""

    ok: bool
    result: Any
    error: ExceptionInfo | None
    seconds: float  # round trip seen by the controller


def parse_reply(raw: bytes, rid: int) -> Reply | SessionDead:
    """One protocol line as a Reply, or the PROTOCOL death it earns. Never raises: the
    line is parsed with caps on size and depth (bounded_json), and an error record is
    bounded like a job's exception record."""
    try:
        reply = bounded_json.loads(raw, REPLY_CAPS, "reply")
    except (JSONLimitError, ValueError) as exc:
        return SessionDead(DeathReason.PROTOCOL, f"{exc}: {raw[:200]!r}")
    if not isinstance(reply, dict) or reply.get("id") != rid or \
            not isinstance(reply.get("ok"), bool):
        return SessionDead(DeathReason.PROTOCOL, f"malformed reply: {raw[:200]!r}")
    if reply["ok"]:
        return Reply(ok=True, result=reply.get("result"), error=None, seconds=0.0)
    return Reply(ok=False, result=None, seconds=0.0,
                 error=job_output.exception_info(reply.get("error"), required=False))
