"""Another local user, for the tests of what one user of a host can reach of another's
controller: processes run as OTHER_UID (no passwd entry needed; root switches to it),
with the system's Python and the standard library only (the project's venv may sit in
root's home, which that user cannot read).

- `probe`: what that user gets trying to connect to a Unix socket, read files, list
  directories (0, or the errno);
- `Relay`: a TCP port on loopback that forwards each connection to a Unix socket,
  connecting as that user, so a gRPC client in the test speaks to a controller exactly
  as far as that user could;
- `listening`: the TCP and Unix sockets a process listens on (from /proc).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

OTHER_UID = 64123
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix: a listening Unix socket

PROBE = r"""
import json, os, socket, sys

def attempt(fn):
    try:
        fn()
        return 0
    except OSError as exc:
        return exc.errno

def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()

def read(path):
    with open(path, "rb") as f:
        f.read(64)

actions = {"connect": connect, "read": read, "list": os.listdir}
print(json.dumps({name: attempt(lambda: actions[how](path))
                  for name, how, path in json.loads(sys.argv[1])}))
"""

RELAY = r"""
import socket, sys, threading
target = sys.argv[1]
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)

def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

while True:
    client, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(target)
    except OSError as exc:
        print("refused", exc.errno, flush=True)
        client.close()
        continue
    print("connected", flush=True)
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
"""


def _as_other(python: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-I", "-c", code, *args], user=OTHER_UID,
                            group=OTHER_UID, extra_groups=[], cwd="/",
                            env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def other_python() -> str:
    """A Python that OTHER_UID can run; skips the test where this process cannot switch
    uid (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root (CI runs as root)")
    python = _python_of_other()
    if python is None:
        pytest.skip(f"no Python that uid {OTHER_UID} may run")
    return python


@functools.cache
def _python_of_other() -> str | None:
    for python in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if not Path(python).exists():
            continue
        done = _as_other(python, "print('ok')")
        out, _ = done.communicate(timeout=30)
        if done.returncode == 0 and out.strip() == "ok":
            return python
    return None


def probe(python: str, actions: list[tuple[str, str, str]]) -> dict[str, int]:
    """Each (name, "connect" | "read" | "list", path) tried as OTHER_UID: name -> errno
    (0: it worked)."""
    proc = _as_other(python, PROBE, json.dumps(actions))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result: dict[str, int] = json.loads(out)
    return result


@contextmanager
def relay(python: str, socket_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """127.0.0.1:PORT forwarding to `socket_path`, connecting as OTHER_UID."""
    proc = _as_other(python, RELAY, str(socket_path))
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), proc.stderr.read() if proc.stderr else ""
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(10)


def listening(pid: int) -> dict[str, list[str]]:
    """The sockets process `pid` listens on: {"tcp": ["tcp6 [::]:50051 ..."], "unix":
    [paths]}, matched by the socket inodes among its open files."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found: dict[str, list[str]] = {"tcp": [], "unix": []}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                found["tcp"].append(f"{table} {fields[1]}")
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[3], 16) & ACCEPTING and fields[6] in inodes:
            found["unix"].append(fields[7])
    return found
