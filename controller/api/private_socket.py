"""The controller's private listener: a Unix socket that only its own user can reach.

Every controller serves one, in `<state dir>/private/` (mode 0700, owned by the
controller's uid; the socket itself 0600). Whoever connects through it runs as the state
dir's owner - that user could read the store directly anyway - and is the LOCAL
principal (controller/principals.py). The commands that find a controller through the
state dir's lock file connect here (controller/commands/local.py); the controller a
command embeds listens here only. TCP is served only where it is configured, and only
with a token (ServerConfig.tcp_address).

A Unix socket's path holds at most 107 bytes. A state dir too deep for that gets its
socket in a fresh directory (mkdtemp: mode 0700, a random name) under $XDG_RUNTIME_DIR
when that is this user's, else the system's temp dir; the lock file records the path,
and the directory goes when the controller stops.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.config import ConfigError

LOCK_FILE = "controller.lock"  # in the state dir: its holder's pid and private socket
PRIVATE_DIR = "private"
SOCKET_NAME = "controller.sock"
MAX_PATH_BYTES = 107  # sun_path is 108 bytes, the last one NUL
PREFIX = "unix:"


def private_dir(state_dir: Path) -> Path:
    """`<state dir>/private`: created 0700 if missing; refused if it is not a directory
    of this uid (a symlink, a file, another user's), tightened to 0700 if it is ours."""
    path = state_dir.absolute() / PRIVATE_DIR
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory (a symlink or a file): remove it, and "
                          "the controller creates its private directory there")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to this controller's uid "
                          f"{os.geteuid()}: run the controller as the state dir's owner, or "
                          "pass another --state-dir")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _fits(path: Path) -> bool:
    return len(os.fsencode(str(path))) <= MAX_PATH_BYTES


def _runtime_dir() -> str:
    """$XDG_RUNTIME_DIR if it is this user's private directory, else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime:
        try:
            st = os.stat(runtime)
        except OSError:
            return tempfile.gettempdir()
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and \
                not st.st_mode & 0o077:
            return runtime
    return tempfile.gettempdir()


@dataclass(frozen=True)
class PrivateSocket:
    path: Path
    own_dir: Path | None = None  # the fresh directory made for a path too long, or None

    @property
    def address(self) -> str:
        """The gRPC address (`unix:/abs/path`) clients connect to."""
        return PREFIX + str(self.path)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> PrivateSocket:
        path = private_dir(state_dir) / SOCKET_NAME
        if _fits(path):
            return cls(path)
        own = Path(tempfile.mkdtemp(prefix="bilevel-", dir=_runtime_dir()))
        path = own / SOCKET_NAME
        if not _fits(path):
            own.rmdir()
            raise ConfigError(
                f"no path for the controller's Unix socket fits in {MAX_PATH_BYTES} bytes: "
                f"{state_dir.absolute()} and the temp dir {own.parent} are both too deep; "
                "pass a shorter --state-dir, or set TMPDIR to a short directory")
        return cls(path, own)

    def bound(self) -> None:
        """Called once gRPC has bound the socket: only its owner may connect."""
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        """Remove the socket (gRPC does too, on a clean stop) and its own directory."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.own_dir is not None:
            with contextlib.suppress(OSError):
                self.own_dir.rmdir()


def is_private(address: str) -> bool:
    """Whether a client address names a Unix socket (a controller's private listener)."""
    return address.startswith(PREFIX)
