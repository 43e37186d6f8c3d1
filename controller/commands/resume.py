"""`bilevel resume RUN`: continue a run that paused because its LLM failed for good."""

from __future__ import annotations

import argparse
import sys

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command
from controller.commands.controller_flags import add_llm_access_arguments
from controller.commands.local import check_detach, where_of
from controller.commands.run import embedded_config, follow
from controller.config import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("resume", help="resume a paused run and follow it")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("--detach", action="store_true", help="return once it is running")
    add_connection_arguments(cmd)
    add_llm_access_arguments(cmd)
    cmd.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    try:
        check_detach(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_client_command(args, lambda client: _resume(client, args),
                              embedded=lambda: embedded_config(args))


async def _resume(client: Client, args: argparse.Namespace) -> int:
    # The stream of a paused run ends at its run_paused event: its seq is where the
    # resumed part begins.
    last = 0
    request = rpb.WatchRunRequest(run_id=args.run_id)
    async for event in client.runs.WatchRun(request, metadata=client.metadata):
        last = event.seq
    run = await client.runs.ResumeRun(rpb.ResumeRunRequest(run_id=args.run_id),
                                      metadata=client.metadata)
    if args.detach:
        print(run.id)
        return 0
    return await follow(client, run, after_seq=last, reconnect=where_of(client) != "embedded")
