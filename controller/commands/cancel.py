"""`bilevel cancel RUN`: stop a run; its trial in flight is killed and not counted."""

from __future__ import annotations

import argparse

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("cancel", help="cancel a run")
    cmd.add_argument("run_id", metavar="RUN")
    add_connection_arguments(cmd)
    cmd.set_defaults(func=cmd_cancel)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def cancel(client: Client) -> int:
        run = await client.runs.CancelRun(rpb.CancelRunRequest(run_id=args.run_id),
                                          metadata=client.metadata)
        state = rpb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
        print(f"{run.id}: {state} - {run.summary or run.stop_reason}")
        return 0

    return run_client_command(args, cancel)
