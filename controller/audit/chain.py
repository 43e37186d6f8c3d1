"""One audit record's canonical form, its hash, and the chain head.

A record is a flat JSON object. Its `hash` is the SHA-256 of its canonical JSON (sorted
keys, no spaces, ASCII only) without the `hash` key; `prev` is the hash of the record
before it (GENESIS for the first) and `seq` counts records from 1, so an edited, removed,
reordered or inserted record breaks the chain at that line. The head — the count of
records and the last hash — is kept in a file of its own next to the log, so a log cut
short no longer reaches it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

AUDIT_DIR = "audit"  # in the state dir
LOG_FILE = "audit.log"
HEAD_FILE = "audit.head"
GENESIS = "0" * 64
# The head file: the count (20 digits), a space, the hash and a newline; one write at
# offset 0 replaces it whole.
HEAD_BYTES = 20 + 1 + 64 + 1
MAX_FIELD_CHARS = 256  # ids, methods and peers are cut to this in a record


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def digest(record: dict[str, Any]) -> str:
    """The hash a record must carry: over everything in it but its `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"}
                                    )).hexdigest()


def seal(fields: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
    record = {**fields, "seq": seq, "prev": prev}
    record["hash"] = digest(record)
    return record


def encode(record: dict[str, Any]) -> bytes:
    """The record's line in the log."""
    return canonical(record) + b"\n"


def timestamp() -> str:
    """A record's `time`: now, UTC, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cut(value: str) -> str:
    return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS - 1] + "…"


@dataclass(frozen=True)
class Head:
    count: int  # records in the chain (the last one's seq)
    hash: str  # the last record's hash (GENESIS when there is none)

    def encode(self) -> bytes:
        return f"{self.count:020d} {self.hash}\n".encode()

    @staticmethod
    def decode(raw: bytes) -> Head | None:
        """The head in a head file's bytes; None when they are not one (ValueError is
        kept for bytes that are neither empty nor a head)."""
        if not raw:
            return None
        text = raw.decode("ascii", errors="replace")
        count, _, last = text.rstrip("\n").partition(" ")
        if len(raw) != HEAD_BYTES or not count.isdigit() or len(last) != 64 or \
                any(c not in "0123456789abcdef" for c in last):
            raise ValueError(f"not an audit head: {text[:100]!r}")
        return Head(int(count), last)


EMPTY = Head(0, GENESIS)
