"""Weakened audit logs, built here for the sensitivity twins of tests/test_audit_*.py: each
shows what the real one's strictness catches by failing to catch it."""

from __future__ import annotations

import json
from typing import Any

from controller.api.server import ControllerServer
from controller.audit.chain import AUDIT_DIR
from controller.audit.log import AuditLog, AuditUnavailable
from controller.config import ServerConfig


class TolerantAuditLog(AuditLog):
    """Ignores the records it cannot write: the call goes on unrecorded."""

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().append(fields)
        except AuditUnavailable:
            return {**fields, "seq": 0}


def tolerant_server(config: ServerConfig) -> ControllerServer:
    """A controller whose audit log ignores write errors."""
    server = ControllerServer(config)
    server.audit.close()
    server.audit = TolerantAuditLog(config.state_dir / AUDIT_DIR)
    return server


def plain(lines: list[bytes]) -> list[bytes]:
    """The same records as a plain log: no prev, no hash."""
    out = []
    for line in lines:
        record = json.loads(line)
        out.append(json.dumps({k: v for k, v in record.items()
                               if k not in ("prev", "hash")}).encode() + b"\n")
    return out


def plain_problem(lines: list[bytes]) -> str | None:
    """All a plain log can be checked for: each line a JSON object, seqs in order."""
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            return f"line {number}: not JSON"
        if not isinstance(record, dict) or record.get("seq") != number:
            return f"line {number}: out of order"
    return None
