"""`bilevel image build`: build (or reuse) the sandbox image for this checkout."""

from __future__ import annotations

import argparse

import docker

from controller.sandbox.image import ImageBuildError, ImageRecipe, ensure_image


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser("image", help="manage the sandbox image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser(
        "build", help="build the sandbox image unless one with the same inputs exists")
    build.add_argument(
        "--base", default="auto",
        help="base image: an image reference, 'local' (built from Debian's archive with "
             "debootstrap, no registry needed) or 'auto' (python:3.11-slim-bookworm if "
             "present on the engine, else local)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    try:
        tag = ensure_image(docker.from_env(), ImageRecipe(base=args.base), force=args.force)
    except ImageBuildError as exc:
        print(f"error: {exc}")
        return 1
    except docker.errors.DockerException as exc:
        print(f"error: cannot reach the Docker engine: {exc}")
        return 1
    print(tag)
    return 0
