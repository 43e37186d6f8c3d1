"""`bilevel memory list|clear`: the lessons runs leave for later runs on a task."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from controller.api.client import add_client_arguments, connect
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.serve import add_controller_arguments, server_config
from controller.config import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("memory", help="list or clear lessons kept for later runs")
    actions = cmd.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="newest first")
    listing.add_argument("--task", default="", help="only this task (preset name)")
    listing.add_argument("--limit", type=int, default=100)
    clear = actions.add_parser("clear", help="delete lessons")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", default="", help="only this task's lessons")
    which.add_argument("--all", action="store_true", help="every task's lessons")
    for action in (listing, clear):
        add_client_arguments(action)
        add_controller_arguments(action)
        action.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_memory(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _memory(args: argparse.Namespace) -> int:
    async with connect(args, lambda: server_config(args)) as client:
        try:
            if args.action == "list":
                reply = await client.memory.ListLessons(
                    rpb.ListLessonsRequest(task=args.task, limit=args.limit),
                    metadata=client.metadata)
                for lesson in reply.lessons:
                    print(f"{lesson.id}\t{lesson.task}\t{lesson.kind}\t{lesson.run_id}\t"
                          f"{lesson.text}")
                if not reply.lessons:
                    print("no lessons", file=sys.stderr)
                return 0
            cleared = await client.memory.ClearLessons(
                rpb.ClearLessonsRequest(task=args.task, all=args.all), metadata=client.metadata)
            print(f"deleted {cleared.deleted} lessons")
            return 0
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
