"""Principals an operator keeps in a file (auth.principals_file), TOML:

    [principals.alice]
    role = "user"            # admin, user or viewer
    token_sha256 = "9f86..." # `bilevel token hash` of alice's token; never the token

The file is read again whenever it changes (its size, mtime or inode), checked on each
lookup, so an edit (a principal removed: revoked) takes effect on the next call. A file
that cannot be read or parsed any more refuses every principal it held until it is
fixed (the error is logged), rather than keep serving what it used to say.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import structlog

from controller.principals import Principal, Role, check_new_name
from controller.store.principals import FILE, PrincipalRow

log = structlog.get_logger(__name__)
DIGEST = re.compile(r"[0-9a-f]{64}")


class PrincipalsFileError(ValueError):
    """The file is unreadable or invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    digest: str


def parse(path: Path) -> dict[str, _Entry]:
    """name -> entry; PrincipalsFileError naming the entry and what would be valid."""
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise PrincipalsFileError(f"principals file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PrincipalsFileError(f"principals file {path} is not valid TOML: {exc}") \
            from None
    unknown = set(table) - {"principals"}
    if unknown:
        raise PrincipalsFileError(f"principals file {path}: unknown table(s) "
                                  f"{', '.join(sorted(unknown))}; only [principals.NAME]")
    entries: dict[str, _Entry] = {}
    digests: set[str] = set()
    for name, raw in (table.get("principals") or {}).items():
        where = f"principals file {path}: [principals.{name}]"
        try:
            check_new_name(name)
        except ValueError as exc:
            raise PrincipalsFileError(f"{where}: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != {"role", "token_sha256"}:
            raise PrincipalsFileError(f"{where}: needs exactly role and token_sha256")
        try:
            role = Role(raw["role"])
        except ValueError:
            raise PrincipalsFileError(f"{where}: role {raw['role']!r}: use one of "
                                      f"{', '.join(r.value for r in Role)}") from None
        digest = raw["token_sha256"]
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest) or digest in digests:
            raise PrincipalsFileError(f"{where}: token_sha256 must be a distinct SHA-256 "
                                      "in hex (64 of 0-9a-f): `bilevel token hash`")
        digests.add(digest)
        entries[name] = _Entry(Principal(name, role), digest)
    return entries


class PrincipalsFile:
    """The file's principals, re-read when it changes. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, _Entry] = parse(path)  # a bad file stops the start
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _current(self) -> dict[str, _Entry]:
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._entries = parse(self.path)
                except PrincipalsFileError as exc:
                    log.error("principals file unusable: its principals are refused until "
                              "it is fixed", error=str(exc))
                    self._entries = {}
                self._stamp = stamp
            return self._entries

    def by_digest(self, digest: str) -> Principal | None:
        by_digest = {e.digest: e.principal for e in self._current().values()}
        return by_digest.get(digest)

    def by_name(self, name: str) -> Principal | None:
        entry = self._current().get(name)
        return None if entry is None else entry.principal

    def rows(self) -> list[PrincipalRow]:
        return [PrincipalRow(e.principal.name, e.principal.role, 0.0, FILE)
                for e in self._current().values()]
