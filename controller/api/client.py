"""Client side of bilevel.v1 for the CLI, the analysis runner and tests: a typed
ClientConfig, the channel with its credentials, and the stubs. The CLI maps its flags
and environment onto ClientConfig (controller/commands/connection.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import grpc

from controller.api.gen.bilevel.v1 import principals_pb2_grpc, runs_pb2_grpc, sandbox_pb2_grpc
from controller.config import ServerConfig
from controller.errors import FieldError


@dataclass(frozen=True)
class ClientConfig:
    address: str  # HOST:PORT, or unix:PATH of a controller's private socket
    token: str | None = None
    tls_ca: Path | None = None  # set: TLS, verifying the server against this CA
    tls_cert: Path | None = None  # with tls_key: mutual TLS
    tls_key: Path | None = None
    tls_server_name: str | None = None  # override the name checked in the server's cert

    def validate(self) -> None:
        if not self.address:
            raise FieldError("address", "is required (HOST:PORT or unix:PATH)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise FieldError("tls_key" if self.tls_cert else "tls_cert",
                             "the client certificate and its key go together")


class Client:
    """Async stubs plus the call metadata (bearer token) every call needs."""

    def __init__(self, config: ClientConfig) -> None:
        config.validate()
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
async def embedded(config: ServerConfig) -> AsyncIterator[Client]:
    """A client of a controller started in this process on `config`'s state dir. That
    one listens only on its private Unix socket (no TCP, whatever `config` says): its
    user's, as the LLM keys it holds are. It is one-shot (ServerConfig.one_shot): it
    resumes no interrupted run, and pauses the runs it ran when it stops."""
    # Imported here: the server and the research stack cost every client's start-up.
    from controller.api.server import ControllerServer

    server = ControllerServer(replace(config, listen="", tls=None, one_shot=True))
    await server.start()
    try:
        async with Client(ClientConfig(address=server.socket.address)) as client:
            yield client
    finally:
        await server.stop()
