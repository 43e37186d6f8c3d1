"""Client side of bilevel.v1 for the CLI and tests: channel, credentials, stubs."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import grpc

from controller.api.gen.bilevel.v1 import principals_pb2_grpc, runs_pb2_grpc, sandbox_pb2_grpc
from controller.config import TOKEN_ENV, ConfigError, ServerConfig, read_tokens

SERVER_ENV = "BILEVEL_SERVER"


@dataclass(frozen=True)
class ClientConfig:
    address: str
    token: str | None = None
    tls_ca: Path | None = None  # set: TLS, verifying the server against this CA
    tls_cert: Path | None = None  # with tls_key: mutual TLS
    tls_key: Path | None = None
    tls_server_name: str | None = None  # override the name checked in the server's cert


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server connection")
    group.add_argument("--server", default=os.environ.get(SERVER_ENV),
                       help=f"controller address HOST:PORT, or unix:PATH of its private "
                            f"socket (env {SERVER_ENV}); without it, the controller holding "
                            "--state-dir, else one started in this process")
    group.add_argument("--token-file", type=Path,
                       help=f"file with the bearer token (default: env {TOKEN_ENV})")
    group.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    group.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    group.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    group.add_argument("--tls-server-name", help="expected name in the server certificate")


def client_config(args: argparse.Namespace) -> ClientConfig:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    tokens = read_tokens(args.token_file)
    return ClientConfig(address=args.server, token=tokens[0] if tokens else None,
                        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                        tls_server_name=args.tls_server_name)


class Client:
    """Async stubs plus the call metadata (bearer token) every call needs."""

    def __init__(self, config: ClientConfig) -> None:
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", 300 << 20),
            ("grpc.max_send_message_length", 300 << 20)]
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        if config.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=config.tls_ca.read_bytes(),
                private_key=config.tls_key.read_bytes() if config.tls_key else None,
                certificate_chain=config.tls_cert.read_bytes() if config.tls_cert else None)
            self.channel = grpc.aio.secure_channel(config.address, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(config.address, options=options)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.token}"),) if config.token else ())
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.memory = runs_pb2_grpc.MemoryServiceStub(  # type: ignore[no-untyped-call]
            self.channel)
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(  # type: ignore[no-untyped-call]
            self.channel)
        self.principals = principals_pb2_grpc.PrincipalServiceStub(  # type: ignore[no-untyped-call]
            self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


@asynccontextmanager
async def connect(args: argparse.Namespace,
                  embedded: Callable[[], ServerConfig] | None = None) -> AsyncIterator[Client]:
    """A client for `--server`, or else for a controller started in this process on the
    local state dir. That one listens only on its private Unix socket (no TCP, whatever
    the configuration says): its user's, as the LLM keys it holds are."""
    if args.server:
        async with Client(client_config(args)) as client:
            yield client
        return
    if embedded is None:
        raise ConfigError("--server is required")
    from controller.api.server import ControllerServer

    server = ControllerServer(replace(embedded(), listen="", tls=None))
    await server.start()
    try:
        async with Client(ClientConfig(address=server.socket.address)) as client:
            yield client
    finally:
        await server.stop()
