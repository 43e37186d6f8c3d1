"""`bilevel token create|list|revoke|hash`: the principals who may call a controller.

With --server (and an admin's token or certificate) it asks that controller's
PrincipalService. Without it, it writes the state dir's store directly, as the state
dir's owner (whoever may write its files is its admin anyway), whether or not a
controller is running on it: that controller reads the store on every call, so a new
token works at once and a revoked one fails its very next call, with no restart.

`create` prints the new token once, on stdout, and nothing else there: the store keeps
only its hash. `hash` prints the SHA-256 of a token read from stdin, what a principals
file (auth.principals_file) holds instead of the token.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import grpc

from controller.api.client import Client
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.commands.connection import add_client_arguments, required_client_config
from controller.commands.controller_flags import add_controller_arguments, server_config
from controller.config import ConfigError
from controller.principals import Role
from controller.store.db import STORE_FILE
from controller.store.directory import Directory
from controller.store.principals import (
    PrincipalExists,
    PrincipalRow,
    PrincipalStore,
    UnknownPrincipal,
    token_digest,
)
from controller.store.principals_file import PrincipalsFile, PrincipalsFileError

ROLE_NAMES = {ppb.ROLE_ADMIN: Role.ADMIN, ppb.ROLE_USER: Role.USER,
              ppb.ROLE_VIEWER: Role.VIEWER}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("token", help="create, list or revoke the principals (named "
                                       "tokens with a role) who may call the controller")
    actions = cmd.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new principal and its token, printed once")
    create.add_argument("name", help="1-63 of a-z 0-9 . _ -, starting with a letter")
    create.add_argument("--role", required=True, choices=[r.value for r in Role],
                        help="admin: everything; user: its own runs; viewer: read its own")
    listing = actions.add_parser("list", help="every principal and its role")
    revoke = actions.add_parser("revoke", help="remove a principal: its token fails at once")
    revoke.add_argument("name")
    hashing = actions.add_parser("hash", help="the SHA-256 of a token read from stdin, for "
                                              "a principals file (auth.principals_file)")
    for action in (create, listing, revoke):
        add_client_arguments(action)
        add_controller_arguments(action, store_only=True)
        action.set_defaults(func=cmd_token)
    hashing.set_defaults(func=cmd_hash)


def cmd_hash(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip()
    if not token:
        print("error: no token on stdin", file=sys.stderr)
        return 2
    print(token_digest(token))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    try:
        if args.server:
            return asyncio.run(_remote(args))
        return _local(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2


def _local(args: argparse.Namespace) -> int:
    """On the state dir's store, as its owner."""
    config = server_config(args)
    try:
        file = PrincipalsFile(config.auth.principals_file) \
            if config.auth.principals_file else None
    except PrincipalsFileError as exc:
        raise ConfigError(str(exc)) from None
    path = config.state_dir / STORE_FILE
    if args.action != "create" and not path.exists():  # read nothing into being
        raise ConfigError(f"no store in {config.state_dir} (pass --state-dir, or create a "
                          "principal first: `bilevel token create NAME --role user`)")
    store = PrincipalStore(path)
    directory = Directory(store, file)
    try:
        if args.action == "create":
            try:
                token = directory.create(args.name, Role(args.role))
            except (PrincipalExists, ValueError) as exc:
                raise ConfigError(str(exc)) from None
            print(token)
            print(f"created principal {args.name} ({args.role}); the token above is "
                  "shown only now", file=sys.stderr)
        elif args.action == "list":
            _print_rows(directory.rows())
        else:
            try:
                directory.revoke(args.name)
            except (UnknownPrincipal, ValueError) as exc:
                raise ConfigError(str(exc)) from None
            print(f"revoked principal {args.name}", file=sys.stderr)
    finally:
        store.close()
    return 0


async def _remote(args: argparse.Namespace) -> int:
    """Through the controller at --server (PrincipalService, admins only)."""
    async with Client(required_client_config(args)) as client:
        stub, md = client.principals, client.metadata
        if args.action == "create":
            role = next(k for k, v in ROLE_NAMES.items() if v.value == args.role)
            made = await stub.CreateToken(ppb.CreateTokenRequest(name=args.name, role=role),
                                          metadata=md)
            print(made.token)
            print(f"created principal {args.name} ({args.role}); the token above is "
                  "shown only now", file=sys.stderr)
        elif args.action == "list":
            listed = await stub.ListPrincipals(ppb.ListPrincipalsRequest(), metadata=md)
            _print_rows([PrincipalRow(p.name, ROLE_NAMES[p.role],
                                      p.created_at.ToNanoseconds() / 1e9, p.source)
                         for p in listed.principals])
        else:
            await stub.RevokeToken(ppb.RevokeTokenRequest(name=args.name), metadata=md)
            print(f"revoked principal {args.name}", file=sys.stderr)
    return 0


def _print_rows(rows: list[PrincipalRow]) -> None:
    if not rows:
        print("no principals (create one with `bilevel token create NAME --role user`)",
              file=sys.stderr)
    for row in rows:
        when = datetime.fromtimestamp(row.created_at, UTC).strftime("%Y-%m-%d %H:%M") \
            if row.created_at else "-"
        print(f"{row.name}\t{row.role.value}\t{row.source}\t{when}")
