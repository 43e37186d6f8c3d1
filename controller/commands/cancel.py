"""`bilevel cancel RUN`: stop a run; its trial in flight is killed and not counted."""

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
    cmd = sub.add_parser("cancel", help="cancel a run")
    cmd.add_argument("run_id", metavar="RUN")
    add_client_arguments(cmd)
    add_controller_arguments(cmd)
    cmd.set_defaults(func=cmd_cancel)


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_cancel(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _cancel(args: argparse.Namespace) -> int:
    async with connect(args, lambda: server_config(args)) as client:
        try:
            run = await client.runs.CancelRun(rpb.CancelRunRequest(run_id=args.run_id),
                                              metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
    state = rpb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
    print(f"{run.id}: {state} - {run.summary or run.stop_reason}")
    return 0
