"""The read side of RunService and MemoryService over a state dir's store, in this
process: what a read-only command (runs, watch, artifact, memory list) uses when no
controller holds the state dir. The answers follow the controller's own rules
(controller/api/queries.py), read as the state dir's owner (principal "local", an
admin: every principal's runs); errors are the gRPC statuses a controller would send, so
the commands print them the same way. DeleteRun is done here under the state dir's lock
(commands/local_delete.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from grpc_status import rpc_status

from controller.api.errors import status_for
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.queries import RunQueries, lesson_limit, list_lessons, page_of
from controller.commands.holder import holder_of
from controller.config import ConfigError, ServerConfig
from controller.principals import LOCAL
from controller.store.artifacts import ArtifactStore
from controller.store.db import STORE_FILE
from controller.store.memory import MemoryStore
from controller.store.records import RUN_HINT, NotFoundError, RunState
from controller.store.runs import RunStore

STALLED_NOTE = ("no controller is running it now (its controller was killed): `bilevel "
                "resume RUN` continues it where it stopped (a `bilevel serve` started on "
                "this state dir continues it too)")


class LocalRpcError(grpc.aio.AioRpcError):  # type: ignore[misc]
    """A store error as the status a controller would have sent."""

    def __init__(self, exc: Exception) -> None:
        status = status_for(exc)
        if status is None:
            raise exc
        converted = rpc_status.to_status(status)
        super().__init__(converted.code, grpc.aio.Metadata(),
                         grpc.aio.Metadata(*converted.trailing_metadata), converted.details)


class StoreClient:
    """The stubs a read-only command calls (runs, memory), answered from the store."""

    metadata: tuple[tuple[str, str], ...] = ()
    where = "store"

    def __init__(self, state_dir: Path,
                 config_of: Callable[[], ServerConfig] | None = None) -> None:
        self.state_dir = state_dir
        self.runs = StoreRuns(state_dir, config_of)
        self.memory = StoreMemory(self.runs)

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runs.close()


class StoreRuns:
    """GetRun, ListRuns, GetArtifact and WatchRun from the store; DeleteRun under the
    state dir's lock."""

    def __init__(self, state_dir: Path,
                 config_of: Callable[[], ServerConfig] | None = None) -> None:
        self.state_dir = state_dir
        self._config_of = config_of
        self._queries: RunQueries | None = None

    def queries(self) -> RunQueries | None:
        """The store's queries; None when there is no store (nothing was ever run)."""
        if self._queries is None:
            path = self.state_dir / STORE_FILE
            if not path.exists():  # nothing to read: do not create a state dir
                return None
            self._queries = RunQueries(RunStore(path), ArtifactStore(self.state_dir / "runs"))
        return self._queries

    def close(self) -> None:
        if self._queries is not None:
            self._queries.store.close()
            self._queries = None

    def _must(self, run_id: str) -> RunQueries:
        queries = self.queries()
        if queries is None:
            raise NotFoundError("run", run_id, RUN_HINT)
        return queries

    async def GetRun(self, request: rpb.GetRunRequest, metadata: object = None) -> rpb.Run:
        try:
            return self._must(request.run_id).get_run(request, LOCAL)
        except Exception as exc:
            raise LocalRpcError(exc) from None

    async def ListRuns(self, request: rpb.ListRunsRequest,
                       metadata: object = None) -> rpb.ListRunsResponse:
        queries = self.queries()
        try:
            if queries is None:
                page_of(request)  # an invalid request is refused all the same
                return rpb.ListRunsResponse()
            return queries.list_runs(request, LOCAL)
        except Exception as exc:
            raise LocalRpcError(exc) from None

    async def GetArtifact(self, request: rpb.GetArtifactRequest,
                          metadata: object = None) -> rpb.Artifact:
        try:
            return self._must(request.run_id).artifact(request, LOCAL)
        except Exception as exc:
            raise LocalRpcError(exc) from None

    async def WatchRun(self, request: rpb.WatchRunRequest,
                       metadata: object = None) -> AsyncIterator[rpb.RunEvent]:
        """The stored events after `after_seq`, then the end: nothing moves the run on
        while no controller holds the state dir."""
        try:
            queries = self._must(request.run_id)
            run_id, seq = queries.open_watch(request, LOCAL)
        except Exception as exc:
            raise LocalRpcError(exc) from None
        while True:
            step = queries.watch_step(run_id, seq)
            for event in step.events:
                yield event
            if step.end or not step.events:
                return
            seq = step.seq

    async def DeleteRun(self, request: rpb.DeleteRunRequest,
                        metadata: object = None) -> rpb.DeleteRunResponse:
        # Imported here: the deletion's engine side costs every read command's start-up.
        from controller.commands.local_delete import delete_locally

        if self._config_of is None:
            raise ConfigError("--server is required to delete a run")
        self.close()  # the deletion opens the store itself, under the lock
        try:
            return await asyncio.to_thread(delete_locally, self._config_of(), request)
        except ConfigError:
            raise
        except Exception as exc:
            raise LocalRpcError(exc) from None

    def stalled(self, run_id: str) -> bool:
        """Listed as running, yet no controller holds the state dir to run it."""
        queries = self.queries()
        return queries is not None and \
            queries.store.get_run(run_id).state is RunState.RUNNING and \
            holder_of(self.state_dir) is None


class StoreMemory:
    """MemoryService's ListLessons, answered from the store."""

    def __init__(self, runs: StoreRuns) -> None:
        self._runs = runs

    async def ListLessons(self, request: rpb.ListLessonsRequest,
                          metadata: object = None) -> rpb.ListLessonsResponse:
        queries = self._runs.queries()
        try:
            if queries is None:
                lesson_limit(request)  # an invalid request is refused all the same
                return rpb.ListLessonsResponse()
            return list_lessons(MemoryStore(queries.store), request, LOCAL, shared=True)
        except Exception as exc:
            raise LocalRpcError(exc) from None
