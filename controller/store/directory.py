"""Every principal an operator defined: the state dir's store's (store/principals.py)
and the principals file's (store/principals_file.py), read as one directory."""

from __future__ import annotations

from controller.principals import Principal, Role
from controller.store.principals import (
    FILE,
    PrincipalExists,
    PrincipalRow,
    PrincipalStore,
    UnknownPrincipal,
    token_digest,
)
from controller.store.principals_file import PrincipalsFile


class Directory:
    """Every principal an operator defined: the store's and the file's (for a name in
    both, the store's). Each call reads them afresh (the file only when it changed)."""

    def __init__(self, store: PrincipalStore, file: PrincipalsFile | None = None) -> None:
        self.store = store
        self.file = file

    def by_token(self, token: str) -> Principal | None:
        digest = token_digest(token)
        found = self.store.by_digest(digest)
        if found is None and self.file is not None:
            found = self.file.by_digest(digest)
            if found is not None and self.store.by_name(found.name) is not None:
                return None  # the store's principal of that name has another token
        return found

    def by_name(self, name: str) -> Principal | None:
        found = self.store.by_name(name)
        if found is None and self.file is not None:
            found = self.file.by_name(name)
        return found

    def rows(self) -> list[PrincipalRow]:
        rows = self.store.rows()
        names = {r.name for r in rows}
        if self.file is not None:
            rows += [r for r in self.file.rows() if r.name not in names]
        return sorted(rows, key=lambda r: r.name)

    def any(self) -> bool:
        return bool(self.rows())

    def create(self, name: str, role: Role) -> str:
        if self.file is not None and self.file.by_name(name) is not None:
            raise PrincipalExists(name, FILE)
        return self.store.create(name, role)

    def revoke(self, name: str) -> None:
        """UnknownPrincipal when the store has no such principal."""
        if not self.store.revoke(name):
            raise UnknownPrincipal(name, self.file is not None and
                                   self.file.by_name(name) is not None)
