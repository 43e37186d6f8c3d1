"""`bilevel artifact RUN NAME`: fetch best/train.py, results.tsv, final_check.json or
trials/<n>/{train.py,diff,log} to stdout or a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command
from controller.commands.live_view import terminal_safe


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("artifact", help="fetch a run artifact (best/train.py, results.tsv, "
                                          "final_check.json, trials/<n>/train.py|diff|log, "
                                          "mechanisms.md, "
                                          "mechanisms/<name>.py)")
    cmd.add_argument("run_id", metavar="RUN")
    cmd.add_argument("name", metavar="NAME")
    cmd.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    add_connection_arguments(cmd, read_only=True)
    cmd.set_defaults(func=cmd_artifact)


def cmd_artifact(args: argparse.Namespace) -> int:
    async def fetch(client: Client) -> int:
        artifact = await client.runs.GetArtifact(
            rpb.GetArtifactRequest(run_id=args.run_id, name=args.name),
            metadata=client.metadata)
        if args.output:
            args.output.write_bytes(artifact.content)
        elif sys.stdout.isatty():  # a job wrote it: no escape sequence reaches a terminal
            text = artifact.content.decode("utf-8", errors="replace")
            sys.stdout.write(terminal_safe(text))
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(artifact.content)
            sys.stdout.flush()
        return 0

    return run_client_command(args, fetch, read_only=True)
