"""`bilevel serve`: run the controller (gRPC) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from controller.config import (
    DEFAULT_PORT,
    ConfigError,
    ServerConfig,
    TlsConfig,
    default_state_dir,
    read_tokens,
)
from controller.sandbox.executor import ExecutorConfig


def add_controller_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of a controller, shared by `serve` and the in-process one other commands
    start when no --server is given."""
    group = parser.add_argument_group("controller")
    group.add_argument("--state-dir", type=Path, default=None,
                       help="runs, trials, events and artifacts (default: $BILEVEL_STATE_DIR,"
                            " ./.bilevel if present, else ~/.local/share/bilevel)")
    group.add_argument("--image", help="sandbox image (default: the one built for this "
                                       "checkout by `bilevel image build`)")
    group.add_argument("--slots", type=int, default=2, help="sandbox jobs at once")
    group.add_argument("--namespace", default="default",
                       help="label of this controller's containers; its orphans are reaped")
    group.add_argument("--docker-url", help="Docker engine URL (default: from environment)")
    group.add_argument("--max-runs", type=int, default=4, help="runs active at once")


def server_config(args: argparse.Namespace) -> ServerConfig:
    tls = None
    if args_get(args, "tls_cert") or args_get(args, "tls_key"):
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args_get(args, "tls_client_ca"))
    elif args_get(args, "tls_client_ca"):
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    config = ServerConfig(
        listen=args_get(args, "listen") or f"127.0.0.1:{DEFAULT_PORT}",
        state_dir=args.state_dir or default_state_dir(),
        tokens=read_tokens(args_get(args, "server_token_file")), tls=tls,
        executor=ExecutorConfig(image=args.image, slots=args.slots, namespace=args.namespace,
                                docker_url=args.docker_url),
        execute_queue=args_get(args, "execute_queue") or 0,
        max_active_runs=args.max_runs)
    config.validate()
    return config


def args_get(args: argparse.Namespace, name: str) -> Any:
    """Flags only `serve` has read as None in the commands that embed a controller."""
    return getattr(args, name, None)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("serve", help="run the controller's gRPC service")
    cmd.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}",
                     help="HOST:PORT; without a token only loopback is served (port 0: any)")
    cmd.add_argument("--token-file", dest="server_token_file", type=Path,
                     help="accepted bearer tokens, one per line (default: $BILEVEL_TOKEN)")
    cmd.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve TLS")
    cmd.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    cmd.add_argument("--tls-client-ca", type=Path,
                     help="CA of client certificates: require mutual TLS")
    cmd.add_argument("--execute-queue", type=int, default=8,
                     help="Execute calls that may wait for a slot before RESOURCE_EXHAUSTED")
    cmd.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    add_controller_arguments(cmd)
    cmd.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from controller.api.server import serve

    try:
        config = server_config(args)
        asyncio.run(serve(config, port_file=args.port_file))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
