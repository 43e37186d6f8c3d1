"""The controller a local command embeds is its user's alone (issue 20, part 6).

A real embedded controller (controller/api/client.py `connect`, as `bilevel run` starts
one) in a subprocess, asked by its configuration for TCP with a token, and probed from a
second local uid (tests/other_uid.py): its Unix socket, its lock file and its private
directory refuse that uid, it listens on no TCP port at all, and its LLM key - in its
environment, sent only to base URLs its user allowed - is out of that uid's reach.

The sensitivity twins open, in the test, what the rule closes: the same controller with
its socket open to every user lets the other uid list the owner's runs through the
socket; and, with its user's allow-list naming the other uid's server (what
`allow_any_base_url` did for any URL), that uid's CreateRun makes it send its key there.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.private_socket import LOCK_FILE, PRIVATE_DIR, SOCKET_NAME
from controller.commands.holder import holder_of
from controller.research.settings import RunSettings, TaskSettings
from controller.store.runs import RunStore
from tests.fake_llm_server import FakeLLMServer, Reply
from tests.other_uid import listening, other_python, probe, relay
from tests.test_api_harness import Stubs, field_violations, surrogate_run, wait_for_engine
from tests.test_loop_harness import params_answer

ROOT = Path(__file__).resolve().parents[1]
OWNER_KEY = "sk-owner-only-0123456789abcdef"
NO_DOCKER = "unix:///nonexistent/docker.sock"
SEEDED = "run-ownersrun001"

EMBEDDED = textwrap.dedent("""
    import asyncio, signal, sys
    from pathlib import Path
    from controller.api.client import embedded
    from controller.config import ServerConfig
    from controller.llm.settings import LLMAccess
    from controller.sandbox.backend_config import ExecutorConfig

    state, image, docker_url, namespace, allowed = sys.argv[1:6]

    async def main():
        # Its user's configuration asks for TCP with a token: an embedded controller
        # serves its user over its private socket only, whatever the file says.
        config = ServerConfig(
            state_dir=Path(state), listen="127.0.0.1:0",
            tokens=("config-token-0123456789abcdef",),
            executor=ExecutorConfig(image=image or None, docker_url=docker_url or None,
                                    namespace=namespace, runtime="runc"),
            llm=LLMAccess().allowing(allowed))  # its user's --llm-base-url / --base-url
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with embedded(config):
            print("READY", flush=True)
            await stop.wait()
    asyncio.run(main())
""")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp dirs are root's only), so
    what stops the other uid is the controller's own modes."""
    base = Path(tempfile.mkdtemp(prefix="bilevel-uid-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def embedded(state: Path, image: str = "", docker_url: str = NO_DOCKER,
             allowed: str = "") -> Iterator[subprocess.Popen[str]]:
    """The embedded controller in a process of its own, with its user's API key in its
    environment; stopped with SIGTERM (it shuts down as `bilevel run` does)."""
    env = {**os.environ, "OPENAI_API_KEY": OWNER_KEY, "ANTHROPIC_API_KEY": OWNER_KEY,
           "BILEVEL_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED, str(state), image, docker_url,
         f"pytest-local-{os.getpid()}", allowed], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "READY\n" in iter(proc.stdout.readline, ""), "the controller did not start"
        # Its log goes on: read it, so a full pipe never blocks the controller.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def seed_run(state: Path) -> None:
    """One run of the owner's in the store (left running: no engine resumes it here)."""
    store = RunStore(state / "bilevel.sqlite3")
    store.create_run(SEEDED, RunSettings(task=TaskSettings(preset="surrogate")).to_dict())
    store.close()


def open_to_everyone(state: Path) -> Path:
    """The twin's careless modes: the state and private directories enterable and the
    socket writable by every user (what a TCP listener on loopback amounts to). Returns
    the socket's path."""
    socket_path = state / PRIVATE_DIR / SOCKET_NAME
    state.chmod(0o711)
    (state / PRIVATE_DIR).chmod(0o711)
    socket_path.chmod(0o666)
    return socket_path


def list_runs(address: str) -> list[str]:
    stubs = Stubs(address)
    return [r.id for r in stubs.runs.ListRuns(rpb.ListRunsRequest(), timeout=20).runs]


def test_deny_another_uid_reaches_the_embedded_controller_its_lock_or_key(
        shared_tmp: Path) -> None:
    python = other_python()
    fresh = shared_tmp / "fresh"
    with embedded(fresh) as proc:
        # A state dir the controller creates is its user's alone: nothing in it shows.
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert probe(python, [("state", "list", str(fresh))]) == {"state": errno.EACCES}

    # An older state dir, open to everyone: each private part still refuses the uid.
    state = shared_tmp / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    seed_run(state)
    with embedded(state) as proc:
        holder = holder_of(state)
        socket_path = state / PRIVATE_DIR / SOCKET_NAME
        assert holder is not None and holder.address == f"unix:{socket_path}"
        assert stat.S_IMODE((state / PRIVATE_DIR).stat().st_mode) == 0o700
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE((state / LOCK_FILE).stat().st_mode) == 0o600
        got = probe(python, [("socket", "connect", str(socket_path)),
                             ("lock", "read", str(state / LOCK_FILE)),
                             ("private", "list", str(state / PRIVATE_DIR)),
                             ("environ", "read", f"/proc/{proc.pid}/environ")])
        assert got == {"socket": errno.EACCES, "lock": errno.EACCES,
                       "private": errno.EACCES, "environ": errno.EACCES}
        # No TCP listener at all (its configuration asked for one): nothing on any port
        # for that uid to find. It listens on its socket only.
        sockets = listening(proc.pid)
        assert sockets == {"tcp": [], "unix": [str(socket_path)]}
        # Through the other uid's relay, gRPC gets nowhere; its owner lists its run.
        with relay(python, socket_path) as (address, relayed):
            with pytest.raises(grpc.RpcError) as info:
                list_runs(address)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert listening(relayed.pid)["tcp"]  # the same check finds a TCP listener
        assert list_runs(holder.address) == [SEEDED]

        # Twin: the socket open to every user is the open door of a token-less loopback
        # port. The other uid connects, and is the owner.
        open_to_everyone(state)
        assert probe(python, [("socket", "connect", str(socket_path))]) == {"socket": 0}
        with relay(python, socket_path) as (address, _):
            assert list_runs(address) == [SEEDED]


@pytest.mark.docker
def test_deny_another_uid_makes_the_embedded_controller_send_its_key_elsewhere(
        shared_tmp: Path, sandbox_image: str) -> None:
    python = other_python()
    state = shared_tmp / "state"
    with FakeLLMServer(responder=lambda _r: Reply(params_answer({"MATRIX_LR": 0.05}))) as \
            theirs:
        request = surrogate_run(trials=1)
        request.proposer.kind = rpb.PROPOSER_KIND_LLM
        request.llm.provider, request.llm.base_url = "openai", theirs.openai_url
        request.llm.model = "fake-model"
        with embedded(state, sandbox_image, docker_url="") as _:
            socket_path = state / PRIVATE_DIR / SOCKET_NAME
            with relay(python, socket_path) as (address, _), \
                    pytest.raises(grpc.RpcError) as info:
                Stubs(address).runs.CreateRun(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            # Reached anyway (the twin's modes), the URL is still not one its user
            # allowed: refused before any key is read.
            open_to_everyone(state)
            with relay(python, socket_path) as (address, _), \
                    pytest.raises(grpc.RpcError) as info:
                Stubs(address).runs.CreateRun(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not allowed by this controller" in field_violations(info.value)[
                "llm.base_url"]
        assert theirs.requests == []

        # Twin: its user's allow-list names the other uid's server, and the socket is
        # open. The other uid's run makes the controller send its key there.
        with embedded(state, sandbox_image, docker_url="", allowed=theirs.openai_url):
            socket_path = open_to_everyone(state)
            with relay(python, socket_path) as (address, _):
                stubs = Stubs(address)
                wait_for_engine(stubs)
                run = stubs.runs.CreateRun(request, timeout=60)
                deadline = time.monotonic() + 180
                while not theirs.requests and time.monotonic() < deadline:
                    time.sleep(0.2)
                stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id), timeout=60)
        assert theirs.requests, "the twin's run never called its LLM"
        assert theirs.requests[0].headers.get("authorization") == f"Bearer {OWNER_KEY}"
