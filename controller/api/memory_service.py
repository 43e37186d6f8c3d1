"""MemoryService: list and clear the lessons runs leave for later runs on a task.

A principal lists the lessons its runs learn from: its own, or everyone's when the
operator shares memory (memory.shared); an admin lists all. It clears its own only (an
admin: all); a viewer clears none.
"""

from __future__ import annotations

import asyncio

import grpc

from controller.api import convert
from controller.api.errors import rpc_errors
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.api.identity import caller
from controller.principals import require_writes
from controller.research.errors import FieldError
from controller.store.memory import MemoryStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class MemoryServicer(runs_pb2_grpc.MemoryServiceServicer):
    def __init__(self, memory: MemoryStore, shared: bool) -> None:
        self.memory = memory
        self.shared = shared  # memory.shared: every principal's runs read every lesson

    @rpc_errors
    async def ListLessons(self, request: rpb.ListLessonsRequest,
                          context: grpc.aio.ServicerContext) -> rpb.ListLessonsResponse:
        if not 0 <= request.limit <= MAX_LIMIT:
            raise FieldError("limit", f"must be in [0, {MAX_LIMIT}] (0: {DEFAULT_LIMIT})")
        principal = caller()
        owner = None if self.shared or principal.sees_everyone else principal.name
        lessons = await asyncio.to_thread(self.memory.list, request.task or None,
                                          request.limit or DEFAULT_LIMIT, owner)
        return rpb.ListLessonsResponse(lessons=[convert.lesson(x) for x in lessons])

    @rpc_errors
    async def ClearLessons(self, request: rpb.ClearLessonsRequest,
                           context: grpc.aio.ServicerContext) -> rpb.ClearLessonsResponse:
        if not request.task and not request.all:
            raise FieldError("all", "must be true to clear the lessons of every task "
                             "(or name one task)")
        principal = caller()
        require_writes(principal, "clear lessons")
        owner = None if principal.sees_everyone else principal.name
        deleted = await asyncio.to_thread(self.memory.clear, request.task or None, owner)
        return rpb.ClearLessonsResponse(deleted=deleted)
