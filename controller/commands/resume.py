"""`bilevel resume RUN`: continue a run that paused because its LLM failed for good."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from controller.api.client import add_client_arguments, connect
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.run import embedded_config, follow
from controller.commands.serve import add_controller_arguments
from controller.config import ConfigError
from controller.llm.access import add_llm_access_arguments


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("resume", help="resume a paused run and follow it")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("--detach", action="store_true", help="return once it is running")
    add_client_arguments(cmd)
    add_controller_arguments(cmd)
    add_llm_access_arguments(cmd)
    cmd.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_resume(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _resume(args: argparse.Namespace) -> int:
    async with connect(args, lambda: embedded_config(args)) as client:
        try:
            # The stream of a paused run ends at its run_paused event: its seq is where
            # the resumed part begins.
            last = 0
            request = rpb.WatchRunRequest(run_id=args.run_id)
            async for event in client.runs.WatchRun(request, metadata=client.metadata):
                last = event.seq
            run = await client.runs.ResumeRun(rpb.ResumeRunRequest(run_id=args.run_id),
                                              metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
        if args.detach:
            print(run.id)
            return 0
        return await follow(client, run, after_seq=last, reconnect=bool(args.server))
