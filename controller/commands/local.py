"""How a command without --server reaches the state dir, cheapest first:

1. A controller holds the state dir (its lock file, readable by its owner only, names
   its pid and private Unix socket): connect to it over that socket, as its owner
   (LOCAL, no token), so a second terminal can list or watch what the first one runs.
2. A read-only command (runs, watch, artifact): read the SQLite store directly (WAL lets
   readers in while nobody writes) - no controller, no Docker, no LLM SDK. `delete`
   takes this way too, holding the state dir's lock while it deletes
   (commands/local_delete.py).
3. Otherwise start a controller in this process (it takes the lock and records its
   address in turn), with its log in <state dir>/bilevel.log.

Errors of the store reader are the same gRPC statuses a controller would send, so the
commands print them the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

from controller.api import convert
from controller.api.client import Client, ClientConfig, connect
from controller.api.errors import status_for
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.private_socket import LOCK_FILE, is_private
from controller.config import ConfigError, ServerConfig
from controller.config_file import load
from controller.store.records import EventKind, NotFoundError, RunState

STORE_FILE = "bilevel.sqlite3"


@dataclass(frozen=True)
class Holder:
    pid: str
    address: str  # unix:PATH; "" when the holder has not recorded it yet (starting)


def state_dir_of(args: argparse.Namespace) -> Path:
    """The state dir the flags, file and environment name (no GPU discovery: cheap)."""
    return _config_of(args).state_dir


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


@asynccontextmanager
async def open_client(args: argparse.Namespace, embedded: Callable[[], ServerConfig] | None,
                      read_only: bool = False) -> AsyncIterator[Any]:
    """A client (Client or StoreClient: the same stubs) for this command; see the module
    doc for the order."""
    if args.server:
        async with connect(args) as client:
            client.where = "server"  # type: ignore[attr-defined]
            yield client
        return
    state_dir = state_dir_of(args)
    holder = holder_of(state_dir)
    if holder is not None:
        if not holder.address:
            raise ConfigError(f"state dir {state_dir} is in use by another controller (pid "
                              f"{holder.pid}) that has not said where it listens; retry, or "
                              "connect to it with --server")
        if not is_private(holder.address):
            raise ConfigError(f"the controller holding {state_dir} (pid {holder.pid}) "
                              f"recorded {holder.address!r}, not its private socket; "
                              "restart it, or connect with --server")
        print(f"connected to the controller holding {state_dir} (pid {holder.pid}, "
              f"{holder.address})", file=sys.stderr)
        async with Client(ClientConfig(address=holder.address)) as client:
            client.where = "holder"  # type: ignore[attr-defined]
            yield client
        return
    if read_only:
        async with StoreClient(state_dir, lambda: _config_of(args)) as store_client:
            yield store_client
        return
    if embedded is None:
        raise ConfigError("--server is required")

    def logged() -> ServerConfig:
        from controller.logging import log_to_file

        config = embedded()
        log_to_file(config.state_dir)
        return config

    async with connect(args, logged) as client:
        client.where = "embedded"  # type: ignore[attr-defined]
        yield client


def _config_of(args: argparse.Namespace) -> ServerConfig:
    """The configuration the flags, file and environment give (no GPU discovery)."""
    from controller.commands.serve import FLAG_KEYS, args_get

    flags = {key: args_get(args, dest) for dest, key in FLAG_KEYS.items()}
    return load(args_get(args, "config"), os.environ, flags,
                discover_gpus=lambda _url, _image: ())


def where_of(client: object) -> str:
    """"server", "holder", "embedded" or "store": what open_client connected to."""
    return str(getattr(client, "where", "server"))


def check_detach(args: argparse.Namespace) -> None:
    """--detach without --server is only right when a controller holds the state dir:
    an in-process one would stop with this command, and leave the run listed running."""
    if args.detach and not args.server and holder_of(state_dir_of(args)) is None:
        raise ConfigError("--detach needs a controller that outlives this command: pass "
                          "--server, or start `bilevel serve` on this state dir")


class StoreClient:
    """The read side of RunService over the state dir's store, in this process."""

    metadata: tuple[tuple[str, str], ...] = ()
    where = "store"

    def __init__(self, state_dir: Path,
                 config_of: Callable[[], ServerConfig] | None = None) -> None:
        self.state_dir = state_dir
        self.runs = _StoreRuns(state_dir, config_of)
        self.memory = _StoreMemory(self.runs)

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runs.close()


class LocalRpcError(grpc.aio.AioRpcError):  # type: ignore[misc]
    """A store error as the status a controller would have sent."""

    def __init__(self, exc: Exception) -> None:
        status = status_for(exc)
        if status is None:
            raise exc
        converted = rpc_status.to_status(status)
        super().__init__(converted.code, grpc.aio.Metadata(),
                         grpc.aio.Metadata(*converted.trailing_metadata), converted.details)


class _StoreRuns:
    """GetRun, ListRuns, GetArtifact and WatchRun, answered from the store; DeleteRun
    done here under the state dir's lock."""

    def __init__(self, state_dir: Path,
                 config_of: Callable[[], ServerConfig] | None = None) -> None:
        self.state_dir = state_dir
        self._config_of = config_of
        self._store: Any = None

    def store(self) -> Any:
        if self._store is None:
            from controller.store.runs import RunStore

            path = self.state_dir / STORE_FILE
            if not path.exists():  # nothing to read: do not create a state dir
                return None
            self._store = RunStore(path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def _must(self, run_id: str) -> Any:
        store = self.store()
        if store is None:
            raise LocalRpcError(NotFoundError("run", run_id, "list runs with `bilevel runs`"))
        try:
            store.get_run(run_id)
        except Exception as exc:
            raise LocalRpcError(exc) from None
        return store

    async def GetRun(self, request: rpb.GetRunRequest, metadata: object = None) -> rpb.Run:
        from controller.research.level2 import report

        store = self._must(request.run_id)
        return convert.run(store.get_run(request.run_id),
                           report.summaries(store, request.run_id))

    async def ListRuns(self, request: rpb.ListRunsRequest,
                       metadata: object = None) -> rpb.ListRunsResponse:
        store = self.store()
        if store is None:
            return rpb.ListRunsResponse()
        from controller.api import pages

        try:
            after = pages.decode(request.page_token)
        except Exception as exc:
            raise LocalRpcError(exc) from None
        # The state dir's owner reads the store as an admin: every principal's runs.
        runs, cursor = store.list_runs(request.page_size or 50, after)
        return rpb.ListRunsResponse(runs=[convert.run(r) for r in runs],
                                    next_page_token=pages.encode(cursor))

    async def GetArtifact(self, request: rpb.GetArtifactRequest,
                          metadata: object = None) -> rpb.Artifact:
        from controller.research.level2 import report
        from controller.store.artifacts import ArtifactStore, content_type

        store = self._must(request.run_id)
        try:
            data = report.artifact(store, request.run_id, request.name)
            if data is None:
                data = ArtifactStore(self.state_dir / "runs").read(
                    request.run_id, request.name, store.get_run(request.run_id).best_trial)
        except Exception as exc:
            raise LocalRpcError(exc) from None
        return rpb.Artifact(name=request.name, content_type=content_type(request.name),
                            content=data)

    async def DeleteRun(self, request: rpb.DeleteRunRequest,
                        metadata: object = None) -> rpb.DeleteRunResponse:
        from controller.commands.local_delete import delete_locally

        if self._config_of is None:
            raise ConfigError("--server is required to delete a run")
        self.close()  # the deletion opens the store itself, under the lock
        self._store = None
        try:
            return await asyncio.to_thread(delete_locally, self._config_of(), request)
        except ConfigError:
            raise
        except Exception as exc:
            raise LocalRpcError(exc) from None

    async def WatchRun(self, request: rpb.WatchRunRequest,
                       metadata: object = None) -> AsyncIterator[rpb.RunEvent]:
        """The stored events after `after_seq`, then the end: nothing moves the run on
        while no controller holds the state dir."""
        store = self._must(request.run_id)
        seq = request.after_seq
        while True:
            events = store.events_after(request.run_id, seq)
            if not events:
                return
            for record in events:
                yield convert.event(record)
                seq = record.seq
                if record.kind is EventKind.RUN_FINISHED:
                    return

    def stalled(self, run_id: str) -> bool:
        """Listed as running, yet no controller holds the state dir to run it."""
        store = self.store()
        return store is not None and store.get_run(run_id).state is RunState.RUNNING and \
            holder_of(self.state_dir) is None


class _StoreMemory:
    """MemoryService's ListLessons, answered from the store."""

    def __init__(self, runs: _StoreRuns) -> None:
        self._runs = runs

    async def ListLessons(self, request: rpb.ListLessonsRequest,
                          metadata: object = None) -> rpb.ListLessonsResponse:
        from controller.api.memory_service import DEFAULT_LIMIT, MAX_LIMIT
        from controller.research.errors import FieldError
        from controller.store.memory import MemoryStore

        if not 0 <= request.limit <= MAX_LIMIT:
            raise LocalRpcError(FieldError("limit", f"must be in [0, {MAX_LIMIT}]"))
        store = self._runs.store()
        if store is None:
            return rpb.ListLessonsResponse()
        lessons = MemoryStore(store).list(request.task or None,
                                          request.limit or DEFAULT_LIMIT)
        return rpb.ListLessonsResponse(lessons=[convert.lesson(x) for x in lessons])


STALLED_NOTE = ("no controller is running it now: it goes on where it stopped when a "
                "controller starts on this state dir (`bilevel serve`, or `bilevel resume`)")
