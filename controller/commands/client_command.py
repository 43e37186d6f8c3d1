"""What every client subcommand shares: its connection flags, a client for `--server`
(or an in-process controller), and one way to report a bad configuration or a failed
RPC — `error: ...` on stderr and exit status 2 — so each command keeps only its own
request and output."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import grpc

from controller.api.client import Client
from controller.api.errors import describe
from controller.commands.connection import add_client_arguments
from controller.commands.controller_flags import add_controller_arguments, server_config
from controller.commands.local import open_client
from controller.config import ConfigError, ServerConfig

Body = Callable[[Client], Awaitable[int]]


def add_connection_arguments(parser: argparse.ArgumentParser, read_only: bool = False) -> None:
    """--server and its credentials; without it, the state dir (`read_only` commands) or
    the flags of the controller started in this process."""
    add_client_arguments(parser, read_only)
    add_controller_arguments(parser, store_only=read_only, embedded=not read_only)


def run_client_command(args: argparse.Namespace, body: Body,
                       embedded: Callable[[], ServerConfig] | None = None,
                       read_only: bool = False) -> int:
    """Run `body` with a connected client; its return value is the exit status. Without
    --server, a `read_only` command reads the store and starts no controller
    (controller/commands/local.py)."""
    make_config = embedded or (lambda: server_config(args))

    async def main() -> int:
        async with open_client(args, make_config, read_only) as client:
            try:
                return await body(client)
            except grpc.aio.AioRpcError as exc:
                print(f"error: {describe(exc)}", file=sys.stderr)
                return 2

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:  # Ctrl-C while following (run._catch_ctrl_c)
        raise KeyboardInterrupt from None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
