"""`bilevel watch RUN`: follow a run's events (from the start, or after --after-seq)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from controller.api.client import add_client_arguments, connect
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.run import follow
from controller.commands.serve import add_controller_arguments, server_config
from controller.config import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("watch", help="follow a run until it finishes")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("--after-seq", type=int, default=0,
                     help="show only events after this sequence number")
    add_client_arguments(cmd)
    add_controller_arguments(cmd)
    cmd.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_watch(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _watch(args: argparse.Namespace) -> int:
    async with connect(args, lambda: server_config(args)) as client:
        try:
            run = await client.runs.GetRun(rpb.GetRunRequest(run_id=args.run_id),
                                           metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
        return await follow(client, run, after_seq=args.after_seq,
                            reconnect=bool(args.server))
