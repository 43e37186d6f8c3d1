"""`bilevel audit`: read the state dir's audit log, or check its chain (--verify).

The log lives in <state dir>/audit/ (controller/audit/); this command reads the files,
so it runs where the state dir is (on the controller's host or in its container) and
needs no controller. There is no RPC to read it: who may read the audit trail is who
may read the controller's state dir.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.audit.chain import AUDIT_DIR, LOG_FILE
from controller.audit.verify import records, verify
from controller.commands.controller_flags import add_controller_arguments, state_dir_of
from controller.config import ConfigError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("audit", help="read the audit log of calls, or --verify its chain",
                         description="One line per call: when, who, what, on which run or "
                                     "object, how it ended, bytes in and out, from where.")
    cmd.add_argument("--verify", action="store_true",
                     help="check the hash chain and its head: exit 0 if intact, 1 naming the "
                          "first edited, removed, reordered or missing record")
    cmd.add_argument("--principal", help="only calls of this principal")
    cmd.add_argument("--run", help="only calls on this run")
    cmd.add_argument("--method", help="only methods containing this text (e.g. DeleteRun)")
    cmd.add_argument("--since", type=since,
                     help="only calls from then on: an ISO time (2025-01-31T12:00Z) or an "
                          "age (90s, 15m, 2h, 7d)")
    cmd.add_argument("--json", action="store_true",
                     help="print the matching records themselves (both of each call: "
                          "request and response), one JSON object a line")
    add_controller_arguments(cmd, store_only=True)
    cmd.set_defaults(func=cmd_audit)


def since(text: str) -> datetime:
    """argparse type of --since."""
    found = _AGO.match(text.strip())
    if found:
        ago = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
        return datetime.now(UTC) - timedelta(seconds=ago)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use an ISO time (2025-01-31T12:00Z) or an age (90s, 15m, 2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        directory = state_dir_of(args) / AUDIT_DIR
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _verify(directory) if args.verify else _list(directory, args)
    except FileNotFoundError:
        print(f"error: no audit log in {directory} (a controller writes it there once it "
              "serves a call)", file=sys.stderr)
        return 2


def _verify(directory: Path) -> int:
    verdict = verify(directory)
    if verdict.problem is not None:
        print(f"audit log INVALID: {directory / LOG_FILE} {verdict.problem}")
        print(f"(the {verdict.records} records before it chain correctly)")
        return 1
    head = verdict.head
    assert head is not None  # a log with records and no head is a problem
    print(f"audit log intact: {verdict.records} records, head seq {head.count} "
          f"hash {head.hash}")
    return 0


def _list(directory: Path, args: argparse.Namespace) -> int:
    pending: dict[int, dict[str, Any]] = {}
    for number, record in records(directory):
        if record is None:
            print(f"warning: line {number} is not an audit record; run `bilevel audit "
                  "--verify`", file=sys.stderr)
            continue
        if not _matches(record, args):
            continue
        if args.json:
            print(json.dumps(record, sort_keys=True))
        elif record.get("phase") == "request":
            pending[record["seq"]] = record
        else:
            print(_line(pending.pop(record.get("call", -1), record), record))
    for request in pending.values():  # still running, or cut off by a crash
        print(_line(request, None))
    return 0


def _matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.principal is not None and record.get("principal") != args.principal:
        return False
    if args.run is not None and record.get("run") != args.run:
        return False
    if args.method is not None and args.method not in str(record.get("method", "")):
        return False
    if args.since is not None:
        try:
            when = datetime.fromisoformat(str(record.get("time")).replace("Z", "+00:00"))
        except ValueError:
            return False
        return bool(when >= args.since)
    return True


def _fields(request: dict[str, Any], response: dict[str, Any] | None) -> Iterator[str]:
    yield str(request.get("time", "?"))
    yield str(request.get("principal", "?"))
    yield str(request.get("method", "?")).rpartition("/")[2]
    yield str(request.get("run") or (response or {}).get("run") or "-")
    yield str(request.get("object") or "-")
    if response is None:
        yield "(no response yet)"
        yield f"in={request.get('bytes_in', 0)}"
    else:
        yield str(response.get("status", "?"))
        yield f"in={response.get('bytes_in', 0)} out={response.get('bytes_out', 0)}"
    yield str(request.get("peer", "?"))


def _line(request: dict[str, Any], response: dict[str, Any] | None) -> str:
    """One call, tab-separated; control characters of ids shown as '?'."""
    return "\t".join(_CONTROL.sub("?", field) for field in _fields(request, response))
