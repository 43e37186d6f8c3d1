"""`bilevel serve`: run the controller (gRPC) until SIGINT/SIGTERM; `--check` asks a
running one on this host whether it serves (the container health check)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from controller.commands.controller_flags import (
    add_controller_arguments,
    add_llm_access_arguments,
    add_serve_arguments,
    config_of,
    server_config,
)
from controller.commands.holder import holder_of
from controller.config import ConfigError, ServerConfig
from controller.logging import log_to_file

CHECK_SERVICE = "bilevel.v1.SandboxService"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("serve", help="run the controller's gRPC service")
    add_serve_arguments(cmd)
    cmd.add_argument("--port-file", type=Path,
                     help="write the bound TCP port here once serving (0: no TCP)")
    cmd.add_argument("--check", action="store_true",
                     help="do not serve: exit 0 if the controller this config describes "
                          "answers SERVING for the sandbox service on this host, else 1")
    add_controller_arguments(cmd)
    add_llm_access_arguments(cmd)
    cmd.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        if args.check:
            return check(config_of(args))
        config = server_config(args)
        # Imported here: the server and the research stack cost `serve --check` and
        # `serve --help` otherwise.
        from controller.api.server import serve

        log_to_file(config.state_dir)  # as well as stderr: the service's output

        asyncio.run(serve(config, port_file=args.port_file))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check(config: ServerConfig, timeout: float = 5.0) -> int:
    """Ask the local controller's health service (no token needed) over the configured
    TCP transport, or without `listen` over the private socket its lock file names; the
    sandbox service is SERVING once the engine and image are usable."""
    import grpc  # only the check speaks gRPC: `serve --help` stays light
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = config.listen.rpartition(":")[2]
    if port == "0":
        raise ConfigError("--check needs a fixed port in server.listen")
    address = f"127.0.0.1:{port}"
    if not config.listen:
        holder = holder_of(config.state_dir)
        if holder is None or not holder.address:
            print(f"unhealthy: no controller serves state dir {config.state_dir}",
                  file=sys.stderr)
            return 1
        address = holder.address
    tls = config.tls if config.listen else None
    if tls is not None:
        key_pair = (tls.key_file.read_bytes(), tls.cert_file.read_bytes()) \
            if tls.client_ca_file else (None, None)
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tls.ca_file or tls.cert_file).read_bytes(),
            private_key=key_pair[0], certificate_chain=key_pair[1])
        channel = grpc.secure_channel(address, creds, options=[
            ("grpc.ssl_target_name_override", tls.server_name)])
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=CHECK_SERVICE),
                               timeout=timeout)
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{CHECK_SERVICE}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
