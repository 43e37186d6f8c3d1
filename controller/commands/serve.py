"""`bilevel serve`: run the controller (gRPC) until SIGINT/SIGTERM; `--check` asks a
running one on this host whether it serves (the container health check)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.config import DEFAULT_PORT, ConfigError, ServerConfig
from controller.config_file import CONFIG_ENV, load
from controller.llm.access import add_llm_access_arguments, llm_access

# Flag dest -> configuration key (controller/config_file.py). A flag left at None is
# not given, so the file and the environment decide.
FLAG_KEYS = {
    "listen": "server.listen", "state_dir": "server.state_dir",
    "server_token_file": "server.token_file", "tls_cert": "server.tls.cert_file",
    "tls_key": "server.tls.key_file", "tls_client_ca": "server.tls.client_ca_file",
    "execute_queue": "server.execute_queue", "max_runs": "server.max_runs",
    "image": "sandbox.image", "slots": "sandbox.slots", "namespace": "sandbox.namespace",
    "docker_url": "sandbox.docker_url", "gpus": "sandbox.gpus", "runtime": "sandbox.runtime",
}
CHECK_SERVICE = "bilevel.v1.SandboxService"


def add_controller_arguments(parser: argparse.ArgumentParser,
                             store_only: bool = False, embedded: bool = False) -> None:
    """Flags of a controller, shared by `serve` and the in-process one other commands
    start when no --server is given. Each overrides the same key of the config file.
    `store_only` (commands that only read the state dir): the sandbox flags are still
    accepted, as the other commands take them, but left out of the help."""
    title = "state dir (without --server)" if store_only else \
        "in-process controller (without --server)" if embedded else "controller"
    group = parser.add_argument_group(title)
    group.add_argument("--config", type=Path, default=None,
                       help=f"TOML config file (default: ${CONFIG_ENV}); see "
                            "deploy/bilevel.toml. Env BILEVEL_<SECTION>__<KEY> overrides it")
    group.add_argument("--state-dir", type=Path, default=None,
                       help="runs, trials, events and artifacts (default: $BILEVEL_STATE_DIR,"
                            " ./.bilevel if present, else ~/.local/share/bilevel)")
    if store_only:
        for flag in ("--image", "--slots", "--gpus", "--runtime", "--namespace",
                     "--docker-url", "--max-runs", "--backend", "--ray-address"):
            group.add_argument(flag, help=argparse.SUPPRESS)
        return
    group.add_argument("--image", help="sandbox image (default: the one built for this "
                                       "checkout by `bilevel image build`)")
    group.add_argument("--slots", type=int, help="sandbox jobs at once (default 2; with GPUs "
                                                 "one per GPU slot)")
    group.add_argument("--gpus", help="'none' (default), 'auto' (every GPU or MIG slice "
                                      "nvidia-smi lists), or ids: '0,1', 'MIG-…', '0+1'")
    group.add_argument("--runtime", choices=("auto", "runc", "runsc"),
                       help="the least isolation a job gets: runsc runs every job under "
                            "gVisor; auto (the default) does so where runsc is registered "
                            "with the engine, else warns and uses runc; runc lets each "
                            "job choose")
    group.add_argument("--namespace", help="label of this controller's containers; its "
                                           "orphans are reaped (default: default)")
    group.add_argument("--docker-url", help="Docker engine URL (default: from environment)")
    group.add_argument("--max-runs", type=int, help="runs active at once (default 4)")
    group.add_argument("--backend", choices=("docker", "ray"), default=None,
                       help="where jobs run: this host's Docker engine (default) or the "
                            "nodes of a Ray cluster (README#ray; needs `pip install .[ray]`)")
    group.add_argument("--ray-address", help="HOST:PORT of the Ray cluster's head (GCS) "
                                             "for --backend ray")


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The validated config: defaults < file < environment < flags. Raises ConfigError."""
    flags = {key: args_get(args, dest) for dest, key in FLAG_KEYS.items()}
    config = load(args_get(args, "config"), os.environ, flags)
    from controller.sandbox.ray_backend import RayConfigError, parse_backend

    try:
        ray = parse_backend(args_get(args, "backend") or "docker",
                            args_get(args, "ray_address"))
    except RayConfigError as exc:
        raise ConfigError(f"--{exc.field.replace('_', '-')}: {exc.reason}") from None
    return replace(config, ray=ray)


def args_get(args: argparse.Namespace, name: str) -> Any:
    """Flags only `serve` has read as None in the commands that embed a controller."""
    return getattr(args, name, None)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("serve", help="run the controller's gRPC service")
    cmd.add_argument("--listen", help=f"serve TCP on HOST:PORT too (e.g. 127.0.0.1:"
                                      f"{DEFAULT_PORT}; port 0: any), which needs a token; "
                                      "without it only the Unix socket in the state dir "
                                      "is served, to this user")
    cmd.add_argument("--token-file", dest="server_token_file", type=Path,
                     help="accepted bearer tokens, one per line (default: $BILEVEL_TOKEN)")
    cmd.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve TLS")
    cmd.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    cmd.add_argument("--tls-client-ca", type=Path,
                     help="CA of client certificates: require mutual TLS")
    cmd.add_argument("--execute-queue", type=int,
                     help="Execute calls that may wait for a slot before RESOURCE_EXHAUSTED "
                          "(default 8)")
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
            config = load(args.config, os.environ,
                          {k: args_get(args, d) for d, k in FLAG_KEYS.items()},
                          discover_gpus=lambda _url, _image: ())
            return check(config)
        config = server_config(args)
        config = replace(config, llm=llm_access(args, config.llm))
        from controller.api.server import serve
        from controller.logging import log_to_file

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
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from controller.commands.local import holder_of

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
