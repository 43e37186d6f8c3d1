"""Who holds a state dir: the controller whose lock file (readable by its owner only)
names its pid and private Unix socket (controller/api/private_socket.py). Asking reads
/proc/locks, and takes the lock (for an instant) only where that cannot tell, so a
controller starting at that moment is not kept from it."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from controller.api.private_socket import LOCK_FILE
from controller.config import ConfigError


@dataclass(frozen=True)
class Holder:
    pid: str
    address: str  # unix:PATH; "" when the holder has not recorded it yet (starting)


def holder_of(state_dir: Path) -> Holder | None:
    """The controller holding the state dir's lock, or None when it is free."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(f"{path} is not readable by uid {os.getuid()}: the state dir "
                          "belongs to another user, whose controller serves only that user; "
                          "pass your own --state-dir, or --server with a token") from None
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines() + [""] * 2
        held = _flocked(os.fstat(fd))
        # No /proc/locks, or one that names files by another device (overlayfs): if the
        # recorded pid lives, try the lock itself (held only for an instant).
        if held is None or (not held and _alive(lines[0].strip())):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
            except BlockingIOError:
                held = True
        if not held:
            return None
        return Holder(lines[0].strip() or "?", lines[1].strip())
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's process
    return int(pid) > 0


def _flocked(st: os.stat_result) -> bool | None:
    """Whether some process holds a flock on this file, read from /proc/locks, so that
    asking never takes the lock (a controller starting that instant would fail); None
    where /proc/locks cannot be read."""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:
            continue  # another kind of lock, or a process waiting for one
        for field in fields:
            parts = field.split(":")
            if len(parts) == 3:
                try:
                    found = (int(parts[0], 16), int(parts[1], 16), int(parts[2]))
                except ValueError:
                    continue
                if found == wanted:
                    return True
    return False
