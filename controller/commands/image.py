"""`bilevel image build`: build (or reuse) the sandbox image for this checkout, and with
--task the task image of a task directory's `requirements` on top of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.commands.build_view import showing_build
from controller.errors import FieldError
from controller.research.tasks.manifest import load_task_dir
from controller.sandbox.backend_config import SandboxUnavailable
from controller.sandbox.image import ImageBuildError, ImageRecipe, ensure_local_image
from controller.sandbox.task_image import WheelSource, ensure_local_task_image


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
    build.add_argument(
        "--task", type=Path, metavar="DIR",
        help="also build the task image for DIR's bilevel-task.toml `requirements`: wheels "
             "downloaded here with pip (binary only), installed in a build without network; "
             "tagged by the inputs' hash and reused (a run of the task uses it)")
    build.add_argument("--find-links", type=Path, action="append", default=[], metavar="DIR",
                       help="--task: a folder of wheels pip may use (repeatable)")
    build.add_argument("--no-index", action="store_true",
                       help="--task: only the --find-links folders, no package index")
    build.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    try:
        tag = ensure_local_image(recipe=ImageRecipe(base=args.base), force=args.force)
        if args.task is not None:
            requirements = load_task_dir(args.task).requirements
            source = WheelSource(find_links=tuple(args.find_links), no_index=args.no_index)
            with showing_build():
                tag = ensure_local_task_image(tag, requirements, source, force=args.force)
    except FieldError as exc:
        print(f"error: task {args.task}: {exc}")
        return 1
    except (ImageBuildError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    except SandboxUnavailable as exc:
        print(f"error: {exc}")
        return 1
    print(tag)
    return 0
