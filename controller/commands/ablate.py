"""`bilevel ablate`: arms x repeats on a task at equal budgets, then fresh-seed
re-evaluations and a report. Rerun with --resume ID after a kill: finished runs are
kept, unfinished ones are waited for, missing ones are created."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from controller.analysis import ablation
from controller.analysis.ablation import ALL_ARMS, AblationSpec
from controller.analysis.runner import AblationStalled, Runner, plan
from controller.api.client import add_client_arguments, connect
from controller.commands.report import write_ablation_report
from controller.commands.run import embedded_config
from controller.commands.serve import add_controller_arguments, server_config
from controller.config import ConfigError
from controller.llm.access import add_llm_access_arguments

EXIT_STALLED = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("ablate", help="compare search strategies: arms x repeats, with "
                                        "statistics and a report")
    cmd.add_argument("--task", default="surrogate",
                     help="task preset (surrogate: a test bed that runs in milliseconds)")
    cmd.add_argument("--repeats", type=int, default=10, help="runs per arm (>= 10 to claim "
                                                             "anything)")
    cmd.add_argument("--trials", type=int, default=20, help="trial budget of every run")
    cmd.add_argument("--arms", default=",".join(ALL_ARMS),
                     help=f"comma-separated, from {','.join(ALL_ARMS)}")
    cmd.add_argument("--seed", type=int, default=0, help="repeat r searches with seed + 1000 r")
    cmd.add_argument("--fresh-seeds", type=int, default=3,
                     help="seeds each final best is re-evaluated on (>= 2)")
    cmd.add_argument("--schedule-batch", type=int, default=2,
                     help="trials in flight for C, D and their controls (A and B use 1)")
    cmd.add_argument("--max-llm-tokens", type=int, default=0,
                     help="LLM token budget of every run (0: unlimited)")
    cmd.add_argument("--parallel", type=int, default=4,
                     help="runs in flight at once (at most the controller's --max-runs)")
    cmd.add_argument("--resume", metavar="ID", default="", help="continue ablation ID")
    cmd.add_argument("--provider", choices=("anthropic", "openai"),
                     help="LLM for the arms' proposers and levels (default: offline)")
    cmd.add_argument("--model", default="")
    cmd.add_argument("--base-url", default="")
    add_client_arguments(cmd)
    add_controller_arguments(cmd)
    add_llm_access_arguments(cmd)
    cmd.set_defaults(func=cmd_ablate)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _new_spec(args: argparse.Namespace) -> AblationSpec:
    if args.repeats < 1 or args.trials < 1:
        raise ValueError("--repeats and --trials must be >= 1")
    if args.fresh_seeds < 2:
        raise ValueError("--fresh-seeds must be >= 2 (the noise of a re-evaluation needs 2)")
    llm = None if args.provider is None else {
        "provider": args.provider, "model": args.model, "base_url": args.base_url}
    spec = AblationSpec(id=ablation.new_id(), task=args.task, repeats=args.repeats,
                        trials=args.trials, seed=args.seed, fresh_seeds=args.fresh_seeds,
                        max_llm_tokens=args.max_llm_tokens, llm=llm,
                        schedule_batch=args.schedule_batch, created_at=time.time())
    plan(spec, [a.strip() for a in args.arms.split(",") if a.strip()], llm is not None, _say)
    return spec


def cmd_ablate(args: argparse.Namespace) -> int:
    try:
        state_dir: Path = server_config(args).state_dir
        spec = ablation.load(state_dir, args.resume) if args.resume else _new_spec(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ablation.save(state_dir, spec)
    _say(f"ablation {spec.id}: arms {', '.join(a.name for a in spec.arms)} x {spec.repeats} "
         f"repeats x {spec.trials} trials; resume with `bilevel ablate --resume {spec.id}`")
    started = time.monotonic()
    try:
        asyncio.run(_drive(args, state_dir, spec))
    except AblationStalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STALLED
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say(f"ablation {spec.id} done in {time.monotonic() - started:.0f} s")
    html_path, md_path = write_ablation_report(state_dir, spec.id, None)
    print(md_path.read_text())
    print(f"report: {html_path}\n{spec.id}")
    return 0


async def _drive(args: argparse.Namespace, state_dir: Path, spec: AblationSpec) -> None:
    async with connect(args, lambda: embedded_config(args)) as client:
        await Runner(client, state_dir, spec, args.parallel, _say).run()
