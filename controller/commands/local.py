"""How a command without --server reaches the state dir, cheapest first:

1. A controller holds the state dir (commands/holder.py): connect to it over its private
   Unix socket, as its owner (LOCAL, no token), so a second terminal can list or watch
   what the first one runs.
2. A read-only command (runs, watch, artifact): read the SQLite store directly
   (commands/store_client.py; WAL lets readers in while nobody writes) - no
   controller, no Docker, no LLM SDK. `delete` takes this way too, holding the state
   dir's lock while it deletes (commands/local_delete.py).
3. Otherwise start a controller in this process (it takes the lock and records its
   address in turn), with its log in <state dir>/bilevel.log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from controller.api.client import Client, ClientConfig
from controller.api.client import embedded as embedded_client
from controller.api.private_socket import is_private
from controller.commands.connection import client_config
from controller.commands.controller_flags import config_of, state_dir_of
from controller.commands.holder import holder_of
from controller.commands.store_client import StoreClient
from controller.config import ConfigError, ServerConfig
from controller.logging import log_to_file


@asynccontextmanager
async def open_client(args: argparse.Namespace, embedded: Callable[[], ServerConfig] | None,
                      read_only: bool = False) -> AsyncIterator[Any]:
    """A client (Client or StoreClient: the same stubs) for this command; see the module
    doc for the order."""
    server = client_config(args)
    if server is not None:
        async with Client(server) as client:
            client.where = "server"  # type: ignore[attr-defined]
            yield client
        return
    state_dir = state_dir_of(args)
    holder = holder_of(state_dir)
    if holder is not None:
        if not holder.address:
            raise ConfigError(f"state dir {state_dir} is in use by another controller (pid "
                              f"{holder.pid}) that has not said where it listens; retry, or "
                              "connect to it with --server")
        if not is_private(holder.address):
            raise ConfigError(f"the controller holding {state_dir} (pid {holder.pid}) "
                              f"recorded {holder.address!r}, not its private socket; "
                              "restart it, or connect with --server")
        print(f"connected to the controller holding {state_dir} (pid {holder.pid}, "
              f"{holder.address})", file=sys.stderr)
        async with Client(ClientConfig(address=holder.address)) as client:
            client.where = "holder"  # type: ignore[attr-defined]
            yield client
        return
    if read_only:
        async with StoreClient(state_dir, lambda: config_of(args)) as store_client:
            yield store_client
        return
    if embedded is None:
        raise ConfigError("--server is required")

    def logged() -> ServerConfig:
        config = embedded()
        log_to_file(config.state_dir)
        return config

    # Said at once: the controller's stack takes seconds to import and start.
    print(f"starting a controller in this process on {state_dir}...", file=sys.stderr,
          flush=True)

    async with embedded_client(logged()) as client:
        client.where = "embedded"  # type: ignore[attr-defined]
        yield client


def where_of(client: object) -> str:
    """"server", "holder", "embedded" or "store": what open_client connected to."""
    return str(getattr(client, "where", "server"))


def check_detach(args: argparse.Namespace) -> None:
    """--detach without --server is only right when a controller holds the state dir:
    an in-process one would stop with this command, and leave the run listed running."""
    if args.detach and not args.server and holder_of(state_dir_of(args)) is None:
        raise ConfigError("--detach needs a controller that outlives this command: pass "
                          "--server, or start `bilevel serve` on this state dir")
