"""MemoryService: list and clear the lessons runs leave for later runs on a task (a
clear also forgets the task's strategy results, from which Level 2's portfolio takes its
lead).

A principal lists the lessons its runs learn from: its own, or everyone's when the
operator shares memory (memory.shared); an admin lists all. It clears its own only (an
admin: all); a viewer clears none.
"""

from __future__ import annotations

import asyncio

import grpc

from controller.api.errors import rpc_errors
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.api.identity import caller
from controller.api.queries import list_lessons
from controller.errors import FieldError
from controller.principals import require_writes
from controller.research import access
from controller.store.memory import MemoryStore


class MemoryServicer(runs_pb2_grpc.MemoryServiceServicer):
    def __init__(self, memory: MemoryStore, shared: bool) -> None:
        self.memory = memory
        self.shared = shared  # memory.shared: every principal's runs read every lesson

    @rpc_errors
    async def ListLessons(self, request: rpb.ListLessonsRequest,
                          context: grpc.aio.ServicerContext) -> rpb.ListLessonsResponse:
        return await asyncio.to_thread(list_lessons, self.memory, request, caller(),
                                       self.shared)

    @rpc_errors
    async def ClearLessons(self, request: rpb.ClearLessonsRequest,
                           context: grpc.aio.ServicerContext) -> rpb.ClearLessonsResponse:
        if not request.task and not request.all:
            raise FieldError("all", "must be true to clear the lessons of every task "
                             "(or name one task)")
        principal = caller()
        require_writes(principal, "clear lessons")
        owner = access.listed_owner(principal)
        deleted = await asyncio.to_thread(self.memory.clear, request.task or None, owner)
        return rpb.ClearLessonsResponse(deleted=deleted)
