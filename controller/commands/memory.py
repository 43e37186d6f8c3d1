"""`bilevel memory list|clear`: the lessons runs leave for later runs on a task."""

from __future__ import annotations

import argparse
import sys

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command


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
        add_connection_arguments(action, read_only=action is listing)
        action.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    """`list` reads the store without --server (no controller starts); `clear` writes."""
    return run_client_command(args, lambda client: _memory(client, args),
                              read_only=args.action == "list")


async def _memory(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        reply = await client.memory.ListLessons(
            rpb.ListLessonsRequest(task=args.task, limit=args.limit), metadata=client.metadata)
        for lesson in reply.lessons:
            print(f"{lesson.id}\t{lesson.task}\t{lesson.kind}\t{lesson.run_id}\t{lesson.text}")
        if not reply.lessons:
            print("no lessons", file=sys.stderr)
        return 0
    cleared = await client.memory.ClearLessons(
        rpb.ClearLessonsRequest(task=args.task, all=args.all), metadata=client.metadata)
    print(f"deleted {cleared.deleted} lessons")
    return 0
