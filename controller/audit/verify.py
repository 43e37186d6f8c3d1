"""Reading the audit log back: its records, and the check of its chain against its head.

`verify` names the first line that breaks the chain: an edited record (its hash no
longer matches), a removed, inserted or reordered one (its seq or prev hash is out of
place), a record whose hash was recomputed after an edit (the next record's prev hash
differs), and a log cut short (it ends before the record its head names). It reads the
head before the log, so records a running controller appends meanwhile are no problem.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit.chain import GENESIS, HEAD_FILE, LOG_FILE, Head, digest


@dataclass(frozen=True)
class Problem:
    line: int | None  # the first bad line (1-based); None for the log as a whole
    reason: str

    def __str__(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ChainVerdict:
    """What verifying the audit log's hash chain found."""

    records: int  # whole records read, up to the first problem
    head: Head | None
    problem: Problem | None


def parse(raw: bytes) -> dict[str, Any] | None:
    """A line's record: a JSON object with an int seq and str prev and hash; else None."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int) or \
            not isinstance(record.get("prev"), str) or not isinstance(record.get("hash"), str):
        return None
    return record


def verify(directory: Path) -> ChainVerdict:
    """Raises FileNotFoundError when there is neither a log nor a head."""
    log_path, head_path = directory / LOG_FILE, directory / HEAD_FILE
    try:
        head = Head.decode(head_path.read_bytes())
    except FileNotFoundError:
        head = None
    except ValueError as exc:
        return ChainVerdict(0, None, Problem(None, f"{head_path}: {exc}"))
    if not log_path.exists() and head is not None:
        return ChainVerdict(0, head, Problem(1, f"is missing: {log_path} was removed, and its "
                                                f"head records {head.count} records"))
    with open(log_path, "rb") as f:  # FileNotFoundError: neither log nor head
        count, problem = _walk(f, head)
    if problem is None and head is None and count:
        problem = Problem(None, f"{head_path} is missing: a log cut short could not be told "
                                "from a whole one")
    if problem is None and head is not None and head.count > count:
        problem = Problem(count + 1, f"is missing: the log ends after {count} records but "
                                     f"its head records {head.count}: the log was cut")
    return ChainVerdict(count, head, problem)


def _walk(lines: Iterator[bytes], head: Head | None) -> tuple[int, Problem | None]:
    prev, count = GENESIS, 0
    for number, raw in enumerate(lines, start=1):
        if not raw.endswith(b"\n"):
            if head is None or number <= head.count:
                return count, Problem(number, "is incomplete: the log was cut inside it")
            break  # a record being written past the head read first
        record = parse(raw)
        if record is None:
            return count, Problem(number, "is not an audit record (JSON with seq, prev and "
                                          "hash)")
        if digest(record) != record["hash"]:
            return count, Problem(number, f"(seq {record['seq']}) does not match its hash: "
                                          "the record was edited")
        if record["seq"] != number:
            return count, Problem(number, f"has seq {record['seq']} where {number} belongs: "
                                          "a record was removed, inserted or moved")
        if record["prev"] != prev:
            return count, Problem(number, "does not follow the record before it (its prev "
                                          "hash differs): that record was edited and its "
                                          "hash recomputed, or replaced")
        if head is not None and number == head.count and record["hash"] != head.hash:
            return count, Problem(number, "is not the record the head names (the hashes "
                                          "differ): the log was rewritten up to here")
        prev, count = record["hash"], number
    return count, None


def chain_problem(records: list[dict[str, Any]], head: Head) -> str | None:
    """Whether the log's last `records` chain and continue `head` (checked at start)."""
    for record in records:
        if digest(record) != record["hash"]:
            return f"record seq {record['seq']} does not match its hash"
    for a, b in itertools.pairwise(records):
        if b["seq"] != a["seq"] + 1 or b["prev"] != a["hash"]:
            return f"record seq {b['seq']} does not follow seq {a['seq']}"
    first, last = records[0], records[-1]
    if head.count > last["seq"]:
        return (f"its last record is seq {last['seq']} but its head records {head.count}: "
                "it was cut")
    if head.count == first["seq"] - 1:
        met = first["prev"] == head.hash
    elif first["seq"] <= head.count:
        met = records[head.count - first["seq"]]["hash"] == head.hash
    else:
        return f"the head (seq {head.count}) is further back than the log's last records"
    return None if met else f"the record at seq {head.count} is not the one the head names"


def records(directory: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record or None for a line that is not one), complete lines only."""
    with open(directory / LOG_FILE, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.endswith(b"\n"):
                yield number, parse(raw)
