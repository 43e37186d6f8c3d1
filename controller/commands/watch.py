"""`bilevel watch RUN`: follow a run's events (from the start, or after --after-seq)."""

from __future__ import annotations

import argparse
import sys

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command
from controller.commands.local import where_of
from controller.commands.run import follow
from controller.commands.store_client import STALLED_NOTE, StoreClient


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("watch", help="follow a run until it finishes")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("--after-seq", type=int, default=0,
                     help="show only events after this sequence number")
    add_connection_arguments(cmd, read_only=True)
    cmd.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    async def watch(client: Client) -> int:
        run = await client.runs.GetRun(rpb.GetRunRequest(run_id=args.run_id),
                                       metadata=client.metadata)
        code = await follow(client, run, after_seq=args.after_seq,
                            reconnect=where_of(client) != "store")
        if isinstance(client, StoreClient) and client.runs.stalled(run.id):
            print(STALLED_NOTE.replace("RUN", run.id), file=sys.stderr)
        return code

    return run_client_command(args, watch, read_only=True)
