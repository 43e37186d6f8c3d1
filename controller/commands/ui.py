"""`bilevel ui`: serve a read-only live web page of a controller's runs and ablations.

A client of the gRPC API like `runs` and `watch`: `--server ADDR` (with its token and
TLS flags), else the controller holding the local state dir (over its private socket),
else that state dir's store read directly. It never starts a controller: a view runs
nothing. The page and its script ship in the package (controller/ui/static): nothing
comes from the internet. Its data needs a key that this process makes and prints once,
in the page's URL: other users of the host reach the port but not the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from controller.commands.client_command import add_connection_arguments
from controller.config import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "ui", help="serve a read-only live web view of runs and ablations",
        description="Serve a read-only live web page of runs and ablations. It never starts "
                    "a controller: it follows --server, or the controller holding the state "
                    "dir, or else reads the state dir's store directly.")
    cmd.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; anything else sends the "
                          "runs and the page's key over plain HTTP)")
    cmd.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    cmd.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    add_connection_arguments(cmd, read_only=True)
    cmd.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port}: use 0..65535 (0: any free port)", file=sys.stderr)
        return 2
    # Imported here: the web view's stack costs `bilevel ui --help` otherwise.
    from controller.commands.controller_flags import state_dir_of
    from controller.commands.local import open_client
    from controller.ui.backend import Backend
    from controller.ui.web import UiServer, is_loopback

    async def main() -> int:
        state_dir = state_dir_of(args)
        async with open_client(args, None, read_only=True) as client:
            loop = asyncio.get_running_loop()
            try:
                ui = UiServer(Backend(client, state_dir), loop, args.host, args.port)
            except OSError as exc:
                raise ConfigError(f"--host {args.host} --port {args.port}: {exc}") from None
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            ui.start()
            if not is_loopback(args.host):
                print(f"warning: --host {args.host}: plain HTTP; the page's key and every "
                      "run it shows cross the network unencrypted", file=sys.stderr)
            print(f"ui: {ui.url} (read-only; the #key part is this page's password; "
                  "Ctrl-C stops it)", flush=True)
            if args.port_file is not None:
                args.port_file.write_text(f"{ui.port}\n")
            try:
                await stop.wait()
            finally:
                await loop.run_in_executor(None, ui.stop)
        return 0

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
