"""A client command's connection: --server and its credentials (flags and environment),
mapped onto the typed ClientConfig of controller/api/client.py."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from controller.api.client import Client, ClientConfig, embedded
from controller.config import TOKEN_ENV, ConfigError, ServerConfig, read_tokens
from controller.errors import FieldError

SERVER_ENV = "BILEVEL_SERVER"
# ClientConfig field -> the flag that sets it.
FLAGS = {"address": "--server", "tls_ca": "--tls-ca", "tls_cert": "--tls-cert",
         "tls_key": "--tls-key", "tls_server_name": "--tls-server-name"}


def add_client_arguments(parser: argparse.ArgumentParser, read_only: bool = False) -> None:
    """--server and its credentials. Its help says what happens without it: a
    `read_only` command reads the state dir's store and never starts a controller."""
    otherwise = "else its store, read directly (no controller is started)" if read_only \
        else "else one started in this process"
    group = parser.add_argument_group("server connection")
    group.add_argument("--server", default=os.environ.get(SERVER_ENV),
                       help=f"controller address HOST:PORT, or unix:PATH of its private "
                            f"socket (env {SERVER_ENV}); without it, the controller holding "
                            f"--state-dir, {otherwise}")
    group.add_argument("--token-file", type=Path,
                       help=f"file with the bearer token (default: env {TOKEN_ENV})")
    group.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    group.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    group.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    group.add_argument("--tls-server-name", help="expected name in the server certificate")


def client_config(args: argparse.Namespace) -> ClientConfig | None:
    """The connection --server and its flags describe; None without --server."""
    if not args.server:
        return None
    tokens = read_tokens(args.token_file)
    config = ClientConfig(address=args.server, token=tokens[0] if tokens else None,
                          tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          tls_server_name=args.tls_server_name)
    try:
        config.validate()
    except FieldError as exc:
        raise ConfigError(f"{FLAGS.get(exc.field, exc.field)}: {exc.reason}") from None
    return config


def required_client_config(args: argparse.Namespace) -> ClientConfig:
    config = client_config(args)
    if config is None:
        raise ConfigError("--server is required")
    return config


@asynccontextmanager
async def connect(args: argparse.Namespace,
                  embedded_config: Callable[[], ServerConfig]) -> AsyncIterator[Client]:
    """A client for --server, or else for a controller started in this process with
    `embedded_config()`."""
    config = client_config(args)
    if config is not None:
        async with Client(config) as client:
            yield client
        return
    async with embedded(embedded_config()) as client:
        yield client
