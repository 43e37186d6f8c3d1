"""`bilevel runs`: list runs, newest first."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.client_command import add_connection_arguments, run_client_command
from controller.commands.local import where_of


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("runs", help="list runs, newest first")
    cmd.add_argument("--limit", type=int, default=20, help="at most this many (0: all)")
    add_connection_arguments(cmd, read_only=True)
    cmd.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    return run_client_command(args, lambda client: _list(client, args), read_only=True)


async def _list(client: Client, args: argparse.Namespace) -> int:
    runs: list[rpb.Run] = []
    token = ""
    while True:
        page = await client.runs.ListRuns(
            rpb.ListRunsRequest(page_size=100, page_token=token), metadata=client.metadata)
        runs.extend(page.runs)
        token = page.next_page_token
        if not token or (args.limit and len(runs) >= args.limit):
            break
    table = Table("run", "state", "preset", "trials", "baseline", "best", "created")
    # Read from the store, nobody holds the state dir: a "running" run was interrupted
    # (its controller was killed) and waits for `bilevel resume`, and says so.
    idle = where_of(client) == "store"
    for run in runs[:args.limit or None]:
        state = rpb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
        if idle and run.state == rpb.RUN_STATE_RUNNING:
            state = "waiting"
        table.add_row(
            run.id, state,
            run.request.task.preset, f"{max(run.trials_done - 1, 0)}/"
            f"{run.request.budgets.max_trials}",
            _metric(run, "baseline_loss"), _metric(run, "best_loss"),
            run.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=140).print(table)
    if idle and any(run.state == rpb.RUN_STATE_RUNNING for run in runs):
        print("waiting: left running when its controller was killed; `bilevel resume RUN` "
              "continues it (a `bilevel serve` on this state dir continues it too)",
              file=sys.stderr)
    return 0


def _metric(run: rpb.Run, field: str) -> str:
    """A run value in its task's metric (the API's is the loss: negated if maximised),
    labelled when the metric is not val_bpb."""
    if not run.HasField(field):
        return "-"
    task = run.request.task
    value = -getattr(run, field) if task.maximize else getattr(run, field)
    name = task.metric if task.metric not in ("", "val_bpb") else ""
    return f"{name} {value:.6f}".strip()
