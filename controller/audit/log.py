"""The audit log's writer: records appended to <state dir>/audit/audit.log, chained and
made durable before the call they record goes on.

- Append-only: the file is opened O_APPEND; one record is one write of one line.
- Chained: each record carries the previous one's hash (controller/audit/chain.py).
- Head: after each record, audit.head is overwritten with the count and the last hash.
  The log is written first, so the head never runs ahead of it; a log shorter than its
  head was cut.
- Durable: every record is on disk (fdatasync) before `append` returns. Records written
  by many threads at once share one fdatasync (a group commit): a caller waits only for
  a sync that began after its record was written.
- Fail closed: a record that cannot be written, synced or followed by its head raises
  AuditUnavailable, and the caller refuses the call. So does a log that was removed,
  replaced or written by anything else while the controller runs; after a failed sync
  (whose pages the kernel may have dropped) or a write that could not be undone, every
  later record is refused until the controller restarts.
- At start the log's last records must continue the head; a log that was cut or edited
  stops the controller (AuditCorrupt) instead of being written on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import structlog

from controller.audit.chain import EMPTY, HEAD_BYTES, HEAD_FILE, LOG_FILE, Head, encode, seal
from controller.audit.verify import chain_problem, parse
from controller.config import ConfigError

log = structlog.get_logger(__name__)
TAIL_BYTES = 1 << 20  # how much of the log's end is read at start to meet the head


class AuditUnavailable(Exception):
    """A record could not be written: the call it was for must be refused."""


class AuditCorrupt(ConfigError):
    """At start: the log does not continue its head (it was cut or edited)."""


class AuditLog:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.path = directory / LOG_FILE
        self.head_path = directory / HEAD_FILE
        self._lock = threading.Lock()  # the chain: one record at a time
        self._sync_lock = threading.Lock()  # one fdatasync at a time
        flags = os.O_CREAT | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {self.path} ({exc}); the "
                              "controller serves no call it cannot record") from None
        try:
            self._head_fd = os.open(self.head_path, os.O_RDWR | flags, 0o600)
        except OSError as exc:
            os.close(self._fd)
            raise ConfigError(f"cannot open the audit head {self.head_path} ({exc}); the "
                              "controller serves no call it cannot record") from None
        self._broken: str | None = None
        self._closed = False
        self.head = EMPTY
        try:
            self.head, self._end = self._resume()
        except BaseException:
            self.close()
            raise
        self._synced = self._end
        log.info("audit log open", path=str(self.path), records=self.head.count,
                 head=self.head.hash)

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write one record and make it durable; returns it sealed (seq, prev, hash).
        Raises AuditUnavailable, having written nothing that breaks the chain."""
        with self._lock:
            if self._broken is not None:
                raise AuditUnavailable(self._broken)
            record = seal(fields, self.head.count + 1, self.head.hash)
            line = encode(record)
            self._check_files()
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"short write: {written} of {len(line)} bytes (disk full?)")
            except OSError as exc:
                self._undo(exc)
                raise self._unavailable(exc) from None
            self._end += len(line)
            self.head = Head(record["seq"], record["hash"])
            try:  # the record stands: a head behind the log is caught up at start
                os.pwrite(self._head_fd, self.head.encode(), 0)
            except OSError as exc:
                raise self._unavailable(exc, self.head_path) from None
            end = self._end
        self._sync_through(end)
        return record

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._fd, self._head_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._broken = self._broken or f"the audit log {self.path} is closed"
        log.info("audit log closed", path=str(self.path), records=self.head.count,
                 head=self.head.hash)

    def _sync_through(self, end: int) -> None:
        """Return once the log's bytes up to `end` are on disk."""
        with self._sync_lock:
            if self._synced >= end:
                return  # a sync that began after this record was written covered it
            target = self._end  # every record written so far
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._broken = (f"the audit log {self.path} failed to sync ({exc}); records "
                                "after it are refused until the controller restarts")
                raise AuditUnavailable(self._broken) from None
            self._synced = target

    def _check_files(self) -> None:
        """The paths still name the files this log writes, and nothing else wrote to
        the log (its size is where the last record ended)."""
        try:
            mine, found = os.fstat(self._fd), os.stat(self.path)
            head_mine, head_found = os.fstat(self._head_fd), os.stat(self.head_path)
        except OSError as exc:
            self._broken = (f"the audit log {self.path} or its head was removed ({exc}); "
                            "calls are refused until the controller restarts")
            raise AuditUnavailable(self._broken) from None
        if (mine.st_dev, mine.st_ino) != (found.st_dev, found.st_ino) or \
                (head_mine.st_dev, head_mine.st_ino) != (head_found.st_dev, head_found.st_ino):
            self._broken = (f"the audit log {self.path} or its head was replaced while the "
                            "controller ran; calls are refused until it restarts")
            raise AuditUnavailable(self._broken)
        if mine.st_size != self._end:
            self._broken = (f"the audit log {self.path} was changed by another writer (size "
                            f"{mine.st_size}, expected {self._end}); calls are refused until "
                            "the controller restarts")
            raise AuditUnavailable(self._broken)

    def _undo(self, exc: OSError) -> None:
        """Cut off what a failed write left; if that fails too, refuse from now on."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError as again:
            self._broken = (f"the audit log {self.path} could not be written ({exc}) nor "
                            f"restored ({again}); calls are refused until the controller "
                            "restarts")

    def _unavailable(self, exc: OSError, path: Path | None = None) -> AuditUnavailable:
        return AuditUnavailable(
            f"the audit log {path or self.path} cannot be written ({exc}): calls are refused "
            "until it can; free disk space or fix the file's permissions")

    def _resume(self) -> tuple[Head, int]:
        """The head to go on from and the log's size, after meeting the log's tail with
        the head file; raises AuditCorrupt when they disagree."""
        size = os.fstat(self._fd).st_size
        try:
            head = Head.decode(os.pread(self._head_fd, HEAD_BYTES + 1, 0))
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        if size == 0:
            if head is not None and head.count > 0:
                raise self._corrupt(f"the log is empty but its head records {head.count} "
                                    "records: it was cut")
            return self._write_head(EMPTY), 0
        if head is None:
            raise self._corrupt("the log has records but no head: the head was removed")
        start = max(0, size - TAIL_BYTES)
        with open(self.path, "rb") as f:
            f.seek(start)
            tail = f.read()
        if not tail.endswith(b"\n"):  # a record cut by a crash mid-write: never synced
            keep = start + tail.rfind(b"\n") + 1
            log.warning("audit log: dropping an incomplete last record", path=str(self.path),
                        bytes=size - keep)
            os.ftruncate(self._fd, keep)
            tail, size = tail[:keep - start], keep
        lines = tail.split(b"\n")[:-1]
        if start > 0:
            lines = lines[1:]  # the first may be the end of a record
        records = [parse(raw) for raw in lines]
        if any(r is None for r in records) or not records:
            raise self._corrupt("its last records are not JSON records")
        last = records[-1]
        assert last is not None
        problem = chain_problem([r for r in records if r is not None], head)
        if problem is not None:
            raise self._corrupt(problem)
        if last["seq"] > head.count:
            log.warning("audit log: the head was behind the log (a crash between a record "
                        "and its head); caught up", head=head.count, log=last["seq"])
            head = self._write_head(Head(last["seq"], last["hash"]))
        return head, size

    def _write_head(self, head: Head) -> Head:
        os.pwrite(self._head_fd, head.encode(), 0)
        return head

    def _corrupt(self, why: str) -> AuditCorrupt:
        return AuditCorrupt(
            f"the audit log {self.path} does not continue its head ({why}); the controller "
            f"will not write on it. Run `bilevel audit --verify` to find the first bad "
            f"record; to start a new chain, move {self.directory} aside (keep it as "
            "evidence)")
