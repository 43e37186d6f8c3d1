"""MemoryService: list and clear the lessons runs leave for later runs on a task."""

from __future__ import annotations

import asyncio

import grpc

from controller.api import convert
from controller.api.errors import rpc_errors
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.research.errors import FieldError
from controller.store.memory import MemoryStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class MemoryServicer(runs_pb2_grpc.MemoryServiceServicer):
    def __init__(self, memory: MemoryStore) -> None:
        self.memory = memory

    @rpc_errors
    async def ListLessons(self, request: rpb.ListLessonsRequest,
                          context: grpc.aio.ServicerContext) -> rpb.ListLessonsResponse:
        if not 0 <= request.limit <= MAX_LIMIT:
            raise FieldError("limit", f"must be in [0, {MAX_LIMIT}] (0: {DEFAULT_LIMIT})")
        lessons = await asyncio.to_thread(self.memory.list, request.task or None,
                                          request.limit or DEFAULT_LIMIT)
        return rpb.ListLessonsResponse(lessons=[convert.lesson(x) for x in lessons])

    @rpc_errors
    async def ClearLessons(self, request: rpb.ClearLessonsRequest,
                           context: grpc.aio.ServicerContext) -> rpb.ClearLessonsResponse:
        if not request.task and not request.all:
            raise FieldError("all", "must be true to clear the lessons of every task "
                             "(or name one task)")
        deleted = await asyncio.to_thread(self.memory.clear, request.task or None)
        return rpb.ClearLessonsResponse(deleted=deleted)
