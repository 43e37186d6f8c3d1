"""`bilevel delete RUN...`: delete finished runs - their records, artifacts and stored
task, and the engine objects only they used (data volumes, task image tags). Without
--server and with no controller on the state dir, it deletes there directly."""

from __future__ import annotations

import argparse
import sys

import grpc

from controller.api.client import Client
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("delete", help="delete finished runs and what only they used")
    cmd.add_argument("run_ids", nargs="+", metavar="RUN")
    cmd.add_argument("--cancel", action="store_true",
                     help="cancel a running or paused run first (else it is refused)")
    add_connection_arguments(cmd, read_only=True)
    cmd.set_defaults(func=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    async def delete(client: Client) -> int:
        code = 0
        for run_id in args.run_ids:
            try:
                done = await client.runs.DeleteRun(
                    rpb.DeleteRunRequest(run_id=run_id, cancel=args.cancel),
                    metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                print(f"error: {describe(exc)}", file=sys.stderr)
                code = 2
                continue
            print(f"{run_id}: deleted ({_size(done.freed_bytes)} freed)")
            for name in done.removed:
                print(f"  removed {name}")
            for name, why in sorted(done.kept.items()):
                print(f"  kept {name}: {why}")
        return code

    return run_client_command(args, delete, read_only=True)


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
