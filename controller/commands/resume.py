"""`bilevel resume RUN`: continue a run that stopped before its end, and follow it.

A run stops before its end in two ways, and both are resumed here: *paused* (its LLM
failed for good, a quota ran out, or the in-process controller of the command that ran it
stopped: Ctrl-C), or *interrupted* (listed running - `waiting` in `bilevel runs` - yet no
controller runs it: its controller was killed). Without --server this command's own
controller runs it, and only it: a controller started by another command never continues
a run by itself. The view opens at once with the run's history, then goes on live.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command
from controller.commands.controller_flags import add_llm_access_arguments
from controller.commands.live_view import printable
from controller.commands.local import check_detach, where_of
from controller.commands.run import embedded_config, follow
from controller.config import ConfigError

FINISHED = (rpb.RUN_STATE_SUCCEEDED, rpb.RUN_STATE_FAILED, rpb.RUN_STATE_CANCELLED)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "resume", help="continue a paused or interrupted run and follow it",
        description="Continue a run that paused (LLM outage, quota, Ctrl-C) or was "
                    "interrupted (its controller was killed: `waiting` in `bilevel runs`), "
                    "and follow it: its trials so far at once, then live. Exit status: 0 "
                    "succeeded, 1 failed or cancelled, 2 nothing to resume (a finished "
                    "run) or an error, 3 paused again.")
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


def state_name(run: rpb.Run) -> str:
    return str(rpb.RunState.Name(run.state)).removeprefix("RUN_STATE_").lower()


def _nothing_to_resume(run: rpb.Run) -> int:
    print(f"error: run {run.id} has already finished ({state_name(run)}): there is nothing "
          f"to resume; `bilevel watch {run.id}` shows it", file=sys.stderr)
    return 2


async def _resume(client: Client, args: argparse.Namespace) -> int:
    run = await client.runs.GetRun(rpb.GetRunRequest(run_id=args.run_id),
                                   metadata=client.metadata)
    if run.state in FINISHED:
        return _nothing_to_resume(run)
    was = f"paused: {printable(run.stop_reason, 300)}" if run.state == rpb.RUN_STATE_PAUSED \
        else "interrupted: no controller was running it"
    try:
        run = await client.runs.ResumeRun(rpb.ResumeRunRequest(run_id=args.run_id),
                                          metadata=client.metadata)
        print(f"resuming run {run.id} ({was})", file=sys.stderr)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        run = await client.runs.GetRun(rpb.GetRunRequest(run_id=args.run_id),
                                       metadata=client.metadata)
        if run.state in FINISHED:  # it finished meanwhile
            return _nothing_to_resume(run)
        if run.state != rpb.RUN_STATE_RUNNING:
            raise
        print(f"run {run.id} is running in its controller already; following it",
              file=sys.stderr)
    if args.detach:
        print(run.id)
        return 0
    return await follow(client, run, reconnect=where_of(client) != "embedded")
