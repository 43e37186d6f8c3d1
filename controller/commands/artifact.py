"""`bilevel artifact RUN NAME`: fetch best/train.py, results.tsv or trials/<n>/{train.py,
diff,log} to stdout or a file."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from controller.api.client import add_client_arguments, connect
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.serve import add_controller_arguments, server_config
from controller.config import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("artifact", help="fetch a run artifact (best/train.py, results.tsv, "
                                          "trials/<n>/train.py|diff|log)")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("name", metavar="NAME")
    cmd.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    add_client_arguments(cmd)
    add_controller_arguments(cmd)
    cmd.set_defaults(func=cmd_artifact)


def cmd_artifact(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_fetch(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _fetch(args: argparse.Namespace) -> int:
    async with connect(args, lambda: server_config(args)) as client:
        try:
            artifact = await client.runs.GetArtifact(
                rpb.GetArtifactRequest(run_id=args.run_id, name=args.name),
                metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
    if args.output:
        args.output.write_bytes(artifact.content)
    else:
        sys.stdout.buffer.write(artifact.content)
        sys.stdout.flush()
    return 0
