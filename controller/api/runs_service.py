"""RunService: thin mapping from bilevel.v1 run messages to the run manager and store.

Every method acts for the calling principal (controller/api/identity.py): another
principal's run is NOT_FOUND, exactly as an unknown one (controller/research/access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from controller.api import convert, pages
from controller.api.errors import rpc_errors
from controller.api.events import EventHub
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.api.identity import caller
from controller.research import access
from controller.research.deletion import RunDeleter
from controller.research.errors import FieldError
from controller.research.level2 import report as mechanism_report
from controller.research.manager import RunManager
from controller.store.artifacts import ArtifactStore, content_type
from controller.store.records import EventKind, RunState
from controller.store.runs import RunStore

DEFAULT_PAGE = 50
MAX_PAGE = 500
POLL_SECONDS = 5.0  # a watcher re-reads the store at least this often


def _required(value: str, field: str) -> str:
    if not value:
        raise FieldError(field, "is required")
    return value


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    def __init__(self, manager: RunManager, store: RunStore, artifacts: ArtifactStore,
                 hub: EventHub, deleter: RunDeleter) -> None:
        self.manager = manager
        self.store = store
        self.artifacts = artifacts
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
        run_id = _required(request.run_id, "run_id")
        record = await asyncio.to_thread(access.readable, self.store, run_id, caller())
        mechanisms = await asyncio.to_thread(mechanism_report.summaries, self.store, run_id)
        return convert.run(record, mechanisms)

    @rpc_errors
    async def ListRuns(self, request: rpb.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> rpb.ListRunsResponse:
        if not 0 <= request.page_size <= MAX_PAGE:
            raise FieldError("page_size", f"must be in [0, {MAX_PAGE}] (0: {DEFAULT_PAGE})")
        after = pages.decode(request.page_token)
        principal = caller()
        owner = None if principal.sees_everyone else principal.name
        runs, cursor = await asyncio.to_thread(self.store.list_runs,
                                               request.page_size or DEFAULT_PAGE, after, owner)
        return rpb.ListRunsResponse(runs=[convert.run(r) for r in runs],
                                    next_page_token=pages.encode(cursor))

    @rpc_errors
    async def CancelRun(self, request: rpb.CancelRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.Run:
        run_id = _required(request.run_id, "run_id")
        return convert.run(await asyncio.to_thread(self.manager.cancel, run_id, caller()))

    @rpc_errors
    async def DeleteRun(self, request: rpb.DeleteRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.DeleteRunResponse:
        run_id = _required(request.run_id, "run_id")
        deleted = await asyncio.to_thread(self.deleter.delete, run_id, request.cancel,
                                          caller())
        return rpb.DeleteRunResponse(run_id=run_id, freed_bytes=deleted.freed_bytes,
                                     removed=deleted.removed, kept=deleted.kept)

    @rpc_errors
    async def WatchRun(self, request: rpb.WatchRunRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.RunEvent]:
        run_id = _required(request.run_id, "run_id")
        if request.after_seq < 0:
            raise FieldError("after_seq", "must be >= 0")
        # NOT_FOUND early; the owner of a run never changes, so once is enough.
        await asyncio.to_thread(access.readable, self.store, run_id, caller())
        seq = request.after_seq
        with self.hub.subscribe(run_id) as wake:
            while True:
                wake.clear()
                # State first: once it is terminal, every event of the run is committed.
                run = await asyncio.to_thread(self.store.get_run, run_id)
                events = await asyncio.to_thread(self.store.events_after, run_id, seq)
                for record in events:
                    yield convert.event(record)
                    seq = record.seq
                    if record.kind is EventKind.RUN_FINISHED:
                        return
                    if record.kind is EventKind.RUN_PAUSED and await self._still_paused(
                            run_id, record.seq):
                        return  # an earlier pause of a resumed run does not end the stream
                if events:
                    continue
                if run.state is not RunState.RUNNING:
                    return  # after_seq is already past run_finished / run_paused
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)

    async def _still_paused(self, run_id: str, seq: int) -> bool:
        run = await asyncio.to_thread(self.store.get_run, run_id)
        later = await asyncio.to_thread(self.store.events_after, run_id, seq, 1)
        return run.state is RunState.PAUSED and not later

    @rpc_errors
    async def GetArtifact(self, request: rpb.GetArtifactRequest,
                          context: grpc.aio.ServicerContext) -> rpb.Artifact:
        run_id = _required(request.run_id, "run_id")
        name = _required(request.name, "name")
        run = await asyncio.to_thread(access.readable, self.store, run_id, caller())
        data = await asyncio.to_thread(mechanism_report.artifact, self.store, run_id, name)
        if data is None:
            data = await asyncio.to_thread(self.artifacts.read, run_id, name, run.best_trial)
        return rpb.Artifact(name=name, content_type=content_type(name), content=data)

    @rpc_errors
    async def ResumeRun(self, request: rpb.ResumeRunRequest,
                        context: grpc.aio.ServicerContext) -> rpb.Run:
        run_id = _required(request.run_id, "run_id")
        return convert.run(await asyncio.to_thread(self.manager.resume, run_id, caller()))
