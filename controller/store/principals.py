"""Named principals and their bearer tokens, stored hashed in the state dir's store.

A token is 256 random bits (`new_token`); the store keeps only its SHA-256, so a copy
of the store does not hold a usable token. A lookup hashes the token it is given and
finds the row by that hash through the table's index: the time it takes depends on
the hash, never on how the given token compares with other principals' tokens.

`PrincipalStore` has its own connection to the store file (WAL: its reads never wait
for the run store's writers), so the API edge reads it on every call: a principal
revoked by another process (`bilevel token revoke` on the state dir) is refused on its
very next call. Principals an operator keeps in a file (auth.principals_file,
store/principals_file.py) are read beside these: store/directory.py is both.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from controller.principals import Principal, Role, check_name, check_new_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""
TOKEN_BYTES = 32  # 256 bits
STORE = "store"  # where a principal is defined: the state dir's store, or the file
FILE = "file"


def new_token() -> str:
    """A fresh bearer token: 256 random bits, hex."""
    return secrets.token_hex(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class PrincipalExists(ValueError):
    """CreateToken for a name that is already a principal."""

    def __init__(self, name: str, source: str) -> None:
        where = ("the principals file (auth.principals_file): change it there"
                 if source == FILE else "revoke it first (`bilevel token revoke "
                 f"{name}`) to issue a new token")
        super().__init__(f"principal {name!r} exists; {where}")
        self.name = name


class UnknownPrincipal(KeyError):
    """RevokeToken for a name that is not a principal of the store."""

    def __init__(self, name: str, in_file: bool) -> None:
        super().__init__(name)
        self.name = name
        self.in_file = in_file

    def __str__(self) -> str:
        if self.in_file:
            return (f"principal {self.name!r} is defined in the principals file "
                    "(auth.principals_file): remove it there; the server reads the change "
                    "on the next call")
        return f"no principal {self.name!r}; list them with `bilevel token list`"


@dataclass(frozen=True)
class PrincipalRow:
    name: str
    role: Role
    created_at: float
    source: str  # STORE or FILE

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role)


class PrincipalStore:
    """The principals table of the store at `path` (created if missing). Thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def by_digest(self, digest: str) -> Principal | None:
        with self._lock:
            row = self._db.execute("SELECT name, role FROM principals WHERE token_sha256 = ?",
                                   (digest,)).fetchone()
        return None if row is None else Principal(row[0], Role(row[1]))

    def by_name(self, name: str) -> Principal | None:
        with self._lock:
            row = self._db.execute("SELECT name, role FROM principals WHERE name = ?",
                                   (name,)).fetchone()
        return None if row is None else Principal(row[0], Role(row[1]))

    def rows(self) -> list[PrincipalRow]:
        with self._lock:
            rows = self._db.execute("SELECT name, role, created_at FROM principals "
                                    "ORDER BY name").fetchall()
        return [PrincipalRow(r[0], Role(r[1]), r[2], STORE) for r in rows]

    def create(self, name: str, role: Role) -> str:
        """A new principal with a new token; returns the token (shown once, stored only
        hashed). PrincipalExists when the name is taken; ValueError for a bad name."""
        check_new_name(name)
        token = new_token()
        with self._lock:
            try:
                self._db.execute("INSERT INTO principals (name, role, token_sha256, "
                                 "created_at) VALUES (?, ?, ?, ?)",
                                 (name, role.value, token_digest(token), time.time()))
            except sqlite3.IntegrityError:
                raise PrincipalExists(name, STORE) from None
        return token

    def revoke(self, name: str) -> bool:
        """Remove the principal and its token; False when there was none. What it owns
        stays owned by its name."""
        with self._lock:
            cur = self._db.execute("DELETE FROM principals WHERE name = ?", (check_name(name),))
        return cur.rowcount == 1
