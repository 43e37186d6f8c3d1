"""RunService: thin mapping from bilevel.v1 run messages to the run manager (changes)
and the run queries (reads: controller/api/queries.py).

Every method acts for the calling principal (controller/api/identity.py): another
principal's run is NOT_FOUND, exactly as an unknown one (controller/research/access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from controller.api import convert
from controller.api.errors import rpc_errors
from controller.api.events import EventHub
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.api.identity import caller
from controller.api.queries import RunQueries, required
from controller.research.deletion import RunDeleter
from controller.research.manager import RunManager
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore

POLL_SECONDS = 5.0  # a watcher re-reads the store at least this often


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    def __init__(self, manager: RunManager, store: RunStore, artifacts: ArtifactStore,
                 hub: EventHub, deleter: RunDeleter) -> None:
        self.manager = manager
        self.queries = RunQueries(store, artifacts)  # the read side (api/queries.py)
        self.hub = hub
        self.deleter = deleter

    @rpc_errors
    async def CreateRun(self, request: rpb.CreateRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.Run:
        settings = convert.run_settings(request)
        # A task directory: checked, stored with the run and loaded by the manager.
        files = dict(request.task.task_files) or None
        del request  # the dict holds the bytes now; do not keep the message twice
        return convert.run(await asyncio.to_thread(self.manager.create, settings, files,
                                                   caller()))

    @rpc_errors
    async def GetRun(self, request: rpb.GetRunRequest,
                     context: grpc.aio.ServicerContext) -> rpb.Run:
        return await asyncio.to_thread(self.queries.get_run, request, caller())

    @rpc_errors
    async def ListRuns(self, request: rpb.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> rpb.ListRunsResponse:
        return await asyncio.to_thread(self.queries.list_runs, request, caller())

    @rpc_errors
    async def CancelRun(self, request: rpb.CancelRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.Run:
        run_id = required(request.run_id, "run_id")
        return convert.run(await asyncio.to_thread(self.manager.cancel, run_id, caller()))

    @rpc_errors
    async def DeleteRun(self, request: rpb.DeleteRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.DeleteRunResponse:
        run_id = required(request.run_id, "run_id")
        deleted = await asyncio.to_thread(self.deleter.delete, run_id, request.cancel,
                                          caller())
        return rpb.DeleteRunResponse(run_id=run_id, freed_bytes=deleted.freed_bytes,
                                     removed=deleted.removed, kept=deleted.kept)

    @rpc_errors
    async def WatchRun(self, request: rpb.WatchRunRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.RunEvent]:
        run_id, seq = await asyncio.to_thread(self.queries.open_watch, request, caller())
        with self.hub.subscribe(run_id) as wake:
            while True:
                wake.clear()
                step = await asyncio.to_thread(self.queries.watch_step, run_id, seq)
                for event in step.events:
                    yield event
                if step.end:
                    return
                seq = step.seq
                if not step.events:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), POLL_SECONDS)

    @rpc_errors
    async def GetArtifact(self, request: rpb.GetArtifactRequest,
                          context: grpc.aio.ServicerContext) -> rpb.Artifact:
        return await asyncio.to_thread(self.queries.artifact, request, caller())

    @rpc_errors
    async def ResumeRun(self, request: rpb.ResumeRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.Run:
        run_id = required(request.run_id, "run_id")
        return convert.run(await asyncio.to_thread(self.manager.resume, run_id, caller()))
