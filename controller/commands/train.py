"""`bilevel train`: one candidate, no search. Without --task (or with a GPT preset's) it
is the GPT preset's command (train_preset.py); with a task directory it runs the
task's two phases once (controller/research/tasks/generic.py) and prints the metric."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from controller.commands.train_preset import add_train_parser
from controller.commands.train_preset import cmd_train as trainer_train


def add_parser(sub: Any) -> None:
    parser = add_train_parser(sub)
    parser.add_argument("--task", default="", metavar="DIR|PRESET",
                        help="a task directory (bilevel-task.toml) or a preset name; "
                             "--train-py then replaces its editable file")
    parser.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    if not args.task:
        return trainer_train(args)
    from controller.errors import FieldError
    from controller.research.tasks.manifest import load_task_dir
    from controller.research.tasks.registry import resolve_task_dir

    try:
        manifest = load_task_dir(resolve_task_dir(args.task))
    except FieldError as exc:
        print(f"error: task: {exc}", file=sys.stderr)
        return 2
    if manifest.builtin and manifest.builtin != "surrogate":
        args.preset = manifest.builtin  # the GPT: its data preparation and trusted evaluator
        return trainer_train(args)
    return _train_task(args, manifest)


def _train_task(args: argparse.Namespace, manifest: Any) -> int:
    from controller.commands.build_view import showing_build
    from controller.errors import FieldError
    from controller.research.task import objective_of
    from controller.research.tasks.registry import task_from_dir
    from controller.sandbox.backend_config import ExecutorConfig
    from controller.sandbox.factory import make_backend
    from controller.sandbox.image import ImageBuildError, ensure_local_image

    try:
        base = ensure_local_image()
    except ImageBuildError as exc:
        print(f"error: sandbox image: {exc}", file=sys.stderr)
        return 2
    executor = make_backend(ExecutorConfig(image=base, runtime=args.runtime))
    try:
        with showing_build():
            image = executor.ensure_task_image(manifest.requirements)
    except (ImageBuildError, ValueError) as exc:
        executor.close()
        print(f"error: task image: {exc}", file=sys.stderr)
        return 2
    try:
        task = task_from_dir(manifest.root, executor, runtime=executor.runtime,
                             image=None if image == base else image)
        source = Path(args.train_py).read_text(encoding="utf-8") if args.train_py \
            else task.baseline_source()
        outcome = task.evaluate(source, 0, threading.Event())
    except FieldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        executor.close()
    objective = objective_of(task)
    print(outcome.log[-8000:], file=sys.stderr)
    if outcome.crashed:
        print(f"error ({outcome.job_status}): {outcome.detail or outcome.exception}",
              file=sys.stderr)
        return 1
    assert outcome.val_bpb is not None
    line = f"{objective.metric}: {objective.shown(outcome.val_bpb):.6f} " \
           f"({objective.better} is better)"
    print(f"{line}; {outcome.detail}" if objective.self_reported else line)
    if args.json:
        print(json.dumps(outcome.metrics, sort_keys=True))
    return 0
