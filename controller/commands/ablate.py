"""`bilevel ablate`: arms x repeats on a task at equal budgets, then fresh-seed
re-evaluations and a report. Rerun with --resume ID after a kill: finished runs are
kept, unfinished ones are waited for, missing ones are created."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

from controller.analysis import ablation
from controller.analysis.ablation import ALL_ARMS, DEFAULT_ARMS, AblationSpec
from controller.analysis.runner import AblationStalled, Runner, plan
from controller.commands.connection import add_client_arguments, connect
from controller.commands.controller_flags import (
    add_controller_arguments,
    add_llm_access_arguments,
    server_config,
)
from controller.commands.report import write_ablation_report
from controller.commands.run import embedded_config
from controller.config import ConfigError
from controller.research.tasks.manifest import load_task_dir

EXIT_STALLED = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("ablate", help="compare search strategies: arms x repeats, with "
                                        "statistics and a report")
    cmd.add_argument("--task", "--preset", dest="task", default="surrogate",
                     help="a preset name (surrogate: a test bed that runs in "
                          "milliseconds) or a task directory; --preset is the same flag")
    cmd.add_argument("--repeats", type=int, default=10, help="runs per arm (>= 10 to claim "
                                                             "anything)")
    cmd.add_argument("--trials", type=int, default=20, help="trial budget of every run")
    cmd.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                     help=f"comma-separated, from {','.join(ALL_ARMS)} (default: "
                          f"{','.join(DEFAULT_ARMS)}; A-sched equals A at --schedule-batch 1)")
    cmd.add_argument("--seed", type=int, default=None,
                     help="repeat r searches with seed + 1000 r (default: drawn at random "
                          "and printed; pass it to repeat an ablation exactly)")
    cmd.add_argument("--fresh-seeds", type=int, default=3,
                     help="seeds each final best is re-evaluated on (>= 2)")
    cmd.add_argument("--schedule-batch", type=int, default=1,
                     help="trials in flight for C, D and their controls (A and B use 1)")
    cmd.add_argument("--l15-every", type=int, default=0, metavar="N",
                     help="Level 1.5's cadence in the arms that run it: trials between "
                          "config cycles (0: the run default)")
    cmd.add_argument("--l2-every", type=int, default=0, metavar="N",
                     help="Level 2's cadence in the arms that run it: trials between "
                          "rounds (0: the run default)")
    cmd.add_argument("--l2-window", type=int, default=0, metavar="N",
                     help="trials each Level-2 candidate is judged over (0: --l2-every)")
    cmd.add_argument("--l2-prior", metavar="ID", default="",
                     help="offline Level 2 learns which built-ins help from the verdicts of "
                          "ablation ID's runs, and its portfolio is led by the fixed "
                          "strategy that gained most there (never from this ablation's own "
                          "repeats, which stay independent); default: from none")
    cmd.add_argument("--sandboxed", action="store_true",
                     help="surrogate: also run every trial's train.py as a sandbox job (by "
                          "default the controller scores the knobs in-process, which is "
                          "what the surrogate's value is anyway: milliseconds per trial)")
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


def _new_spec(args: argparse.Namespace, state_dir: Path) -> AblationSpec:
    if args.repeats < 1 or args.trials < 1:
        raise ValueError("--repeats and --trials must be >= 1")
    if args.fresh_seeds < 2:
        raise ValueError("--fresh-seeds must be >= 2 (the noise of a re-evaluation needs 2)")
    for flag, value in (("--l15-every", args.l15_every), ("--l2-every", args.l2_every),
                        ("--l2-window", args.l2_window), ("--schedule-batch",
                                                          args.schedule_batch - 1)):
        if value < 0:
            raise ValueError(f"{flag} must be >= {1 if flag == '--schedule-batch' else 0}")
    if Path(args.task).is_dir():
        load_task_dir(args.task)  # a bad manifest fails here, naming its key
    if args.sandboxed and args.task != "surrogate":
        raise ValueError("--sandboxed is for the surrogate (other tasks always run sandboxed)")
    seed = args.seed
    if seed is None:
        seed = secrets.randbelow(1_000_000)
        _say(f"seed {seed} (drawn; pass --seed {seed} to repeat this ablation exactly)")
    else:
        _say(f"seed {seed} (given: the same seed gives the same searches)")
    llm = None if args.provider is None else {
        "provider": args.provider, "model": args.model, "base_url": args.base_url}
    spec = AblationSpec(id=ablation.new_id(), task=args.task, repeats=args.repeats,
                        trials=args.trials, seed=seed, fresh_seeds=args.fresh_seeds,
                        max_llm_tokens=args.max_llm_tokens, llm=llm,
                        schedule_batch=args.schedule_batch, l15_every=args.l15_every,
                        l2_every=args.l2_every, l2_window=args.l2_window,
                        in_process=args.task == "surrogate" and not args.sandboxed,
                        created_at=time.time())
    if args.l2_prior:
        spec.l2_prior = args.l2_prior
        earlier = ablation.load(state_dir, args.l2_prior)
        spec.portfolio_lead = ablation.portfolio_lead(earlier)
        try:
            spec.prior_runs = ablation.prior_runs(earlier)
        except ValueError:
            if not spec.portfolio_lead:  # nothing at all to learn from
                raise
        if spec.prior_runs:
            _say(f"Level 2 learns from the verdicts of {len(spec.prior_runs)} run(s) of "
                 f"ablation {args.l2_prior}")
        if spec.portfolio_lead:
            _say(f"Level 2's portfolio is led by {spec.portfolio_lead}, the fixed strategy "
                 f"that gained most in ablation {args.l2_prior}")
    plan(spec, [a.strip() for a in args.arms.split(",") if a.strip()], llm is not None, _say)
    return spec


def cmd_ablate(args: argparse.Namespace) -> int:
    try:
        state_dir: Path = server_config(args).state_dir
        spec = ablation.load(state_dir, args.resume) if args.resume else \
            _new_spec(args, state_dir)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ablation.save(state_dir, spec)
    _say(f"ablation {spec.id}: arms {', '.join(a.name for a in spec.arms)} x {spec.repeats} "
         f"repeats x {spec.trials} trials; resume with `bilevel ablate --resume {spec.id}`")
    for line in describe(spec):
        _say(line)
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


def describe(spec: AblationSpec) -> list[str]:
    """What is equal across arms and how trials are scored, said before anything runs."""
    out = [f"equalised: {spec.trials} trials per run in every arm (the same seeds per "
           "repeat); " + ("LLM tokens are NOT equalised (equal trials and equal tokens "
                          "cannot both hold): the report gives each arm's tokens"
                          if spec.llm else "no LLM: every arm runs offline")]
    if spec.in_process:
        out.append("trials: scored in the controller from their knobs (the surrogate's "
                   "value is a function of the knobs alone), no sandbox job per trial; "
                   "Level-2 mechanisms still run in their sandboxes (--sandboxed runs "
                   "every trial as a job)")
    return out


async def _drive(args: argparse.Namespace, state_dir: Path, spec: AblationSpec) -> None:
    async with connect(args, lambda: embedded_config(args)) as client:
        await Runner(client, state_dir, spec, args.parallel, _say).run()
