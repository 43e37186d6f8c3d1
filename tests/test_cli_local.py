"""Finding the controller that holds a state dir, from its lock file, without taking the
lock (a controller starting that instant must not be refused)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.api.private_socket import LOCK_FILE
from controller.commands import holder as lock_holder

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\nunix:/run/x/controller.sock\\n".encode(), 0)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_lock(state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the state dir's lock as a controller does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state_dir / LOCK_FILE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_a_free_or_stale_lock_has_no_holder(tmp_path: Path) -> None:
    assert lock_holder.holder_of(tmp_path) is None  # no lock file at all
    (tmp_path / LOCK_FILE).write_text("999999\nunix:/run/x/controller.sock\n")  # dead
    assert lock_holder.holder_of(tmp_path) is None


@pytest.mark.parametrize("proc_locks", [True, False], ids=["proc-locks", "flock-probe"])
def test_the_holder_and_its_address_are_read_from_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_locks: bool) -> None:
    if not proc_locks:  # /proc/locks unreadable, or blind to this file (overlayfs)
        monkeypatch.setattr(lock_holder, "_flocked", lambda _st: None)
    with held_lock(tmp_path) as proc:
        with monkeypatch.context() as patch:
            if proc_locks:  # asking never touches the lock
                patch.setattr(fcntl, "flock", _no_flock)
            holder = lock_holder.holder_of(tmp_path)
        assert holder == lock_holder.Holder(str(proc.pid), "unix:/run/x/controller.sock")
    assert lock_holder.holder_of(tmp_path) is None  # it exited: the lock is free again


def _no_flock(*_args: object) -> None:
    raise AssertionError("holder_of took the lock")
