"""`bilevel run`: start a run and follow it live (rich on a terminal, lines otherwise)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import grpc
from rich.console import Console

from controller.api import enums
from controller.api.client import Client
from controller.api.errors import describe
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.build_view import showing_build
from controller.commands.connection import add_client_arguments
from controller.commands.controller_flags import (
    add_controller_arguments,
    add_llm_access_arguments,
    server_config,
    state_dir_of,
)
from controller.commands.flags import check_request, describe_for_flags, field_message
from controller.commands.live_view import RunView, printable
from controller.commands.local import check_detach, open_client
from controller.config import ConfigError, ServerConfig
from controller.errors import FieldError
from controller.logging import LOG_FILE, log_to_file
from controller.research.level1 import offline
from controller.research.settings import PROPOSERS, RENAMED_PROPOSERS
from controller.research.tasks.knob_rules import describe_knobs, search_space
from controller.research.tasks.manifest import load_task_dir
from controller.store import task_bundle
from mechanisms import library

RECONNECT_ATTEMPTS = 30
EXIT_PAUSED = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("run", help="start a research run and follow it")
    cmd.add_argument("--preset", default="cpu-tiny",
                     help="task: surrogate (seconds, no training), cpu-tiny, gpu-5min")
    cmd.add_argument("--task", metavar="DIR|PRESET",
                     help="a task directory (bilevel-task.toml; sent to the controller with "
                          "its data folders and stored with the run, so a resume uses "
                          "exactly these files) or a preset name like --preset")
    cmd.add_argument("--train-py", type=Path, help="baseline train.py instead of the preset's")
    cmd.add_argument("--data-ref", default="", help="prepared data volume instead of the preset's")
    cmd.add_argument("--trials", type=int, default=10, help="trials after the baseline")
    cmd.add_argument("--max-minutes", type=float, default=0.0, help="wall-time budget (0: none)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--freeze", action="append", default=[], metavar="KNOB",
                     help="a knob the proposer must not change (repeatable)")
    cmd.add_argument("--min-improvement", type=float, default=0.0,
                     help="keep only if the loss (the task's metric) improves by more "
                          "than this")
    cmd.add_argument("--keep-rule", choices=("greedy", "noise"), default="greedy",
                     help="greedy: keep any improvement; noise: measure the noise on "
                          "--noise-seeds baseline seeds, keep gains that pass a t test at "
                          "the tail of z > --noise-margin, confirmed by a re-run")
    cmd.add_argument("--noise-seeds", type=int, default=8,
                     help="baseline seeds that measure sigma (default 8; with 3 the "
                          "t threshold for a keep is 4.5 sigma)")
    cmd.add_argument("--noise-margin", type=float, default=2.0,
                     help="in units of sigma, as if sigma were known (the t quantile of "
                          "the same tail is used)")
    cmd.add_argument("--batch", type=int, default=1,
                     help="trials in flight at once (give the controller as many --slots)")
    cmd.add_argument("--final-seeds", type=int, default=3, metavar="N",
                     help="end-of-run check: best and baseline re-run on N fresh paired "
                          "seeds (default 3; 0 skips it)")
    cmd.add_argument("--pruner", choices=("none", "median", "asha"), default="none",
                     help="stop trials whose reported curve (bilevel-progress lines) is "
                          "clearly worse than the others' at the same step: median rule "
                          "or successive halving (see README#progress-and-pruning)")
    cmd.add_argument("--prune-startup", type=int, default=3, metavar="N",
                     help="pruning warm-up: completed trials before any pruning (default 3)")
    cmd.add_argument("--prune-min-step", type=int, default=0, metavar="STEP",
                     help="no pruning below this reported step (asha: its first rung; "
                          "0: automatic)")
    cmd.add_argument("--pipeline", action="store_true",
                     help="prepare the next proposals while trials run")
    llm = cmd.add_argument_group("proposer")
    llm.add_argument("--proposer", type=proposer_kind, default=None,
                     metavar="{" + ",".join(PROPOSERS) + "}",
                     help=proposer_help())
    llm.add_argument("--provider", choices=("anthropic", "openai", "replay"),
                     help="LLM provider (implies --proposer llm); openai means any "
                          "OpenAI-compatible endpoint (DeepSeek, vLLM, Ollama) with --base-url")
    llm.add_argument("--model", default="", help="model name (anthropic default: "
                                                 "claude-sonnet-5-5; openai: required)")
    llm.add_argument("--base-url", default="", help="API endpoint, e.g. "
                                                    "https://api.deepseek.com")
    llm.add_argument("--mode", choices=("params", "code"), default="params",
                     help="params: JSON knob changes; code: search/replace edits of train.py")
    llm.add_argument("--replay", metavar="RUN", default="",
                     help="re-run RUN with its stored LLM answers (same settings)")
    llm.add_argument("--no-memory", action="store_true",
                     help="read and write no memory of the task's runs: no lessons in "
                     "the prompts, no lead for Level 2's portfolio")
    llm.add_argument("--max-llm-tokens", type=int, default=0, help="run budget (0: none)")
    llm.add_argument("--max-llm-cost", type=float, default=0.0,
                     help="run budget in USD, estimated (0: none)")
    llm.add_argument("--llm-timeout", type=float, default=0.0,
                     help="seconds per HTTP attempt (0: 120)")
    llm.add_argument("--llm-attempts", type=int, default=0,
                     help="attempts per call before the run pauses (0: 6)")
    llm.add_argument("--llm-backoff", type=float, default=None,
                     help="first retry delay in seconds, doubling (default 2)")
    outer = cmd.add_argument_group("outer levels")
    outer.add_argument("--levels", default="1",
                       help="levels to run, e.g. 1,1.5,2 (1: inner loop; 1.5: config loop; "
                            "2: mechanism loop). Without --provider, 1.5 is left out unless "
                            "--config-controller rule asks for it (it measured no gain)")
    outer.add_argument("--mechanism-source", choices=("library", "llm"), default=None,
                       help="where Level 2 gets mechanisms: llm (the default; needs "
                            "--provider) or library (offline built-ins)")
    outer.add_argument("--config-controller", choices=("rule", "llm"), default=None,
                       help="Level 1.5: llm (the default with --provider) or rule (offline, "
                            "deterministic; off unless named: on the surrogate it did not "
                            "beat Level 1 alone)")
    outer.add_argument("--l15-every", type=int, default=5, help="trials between L1.5 cycles")
    outer.add_argument("--l2-every", type=int, default=10, help="trials between L2 rounds")
    outer.add_argument("--l2-window", type=int, default=0,
                       help="trials a new mechanism is scored over (0: --l2-every)")
    outer.add_argument("--portfolio-lead", default="", metavar="NAME",
                       help="the portfolio arm that takes 3/4 of every draw (default: the "
                            "strategy that won this task's earlier single-strategy runs)")
    outer.add_argument("--portfolio", default="", metavar="NAME,...|none",
                       help="Level 2's portfolio: the search strategies besides the run's "
                            "proposer that trials are allocated among by what they gain "
                            "(default: local,tpe,random_search,sobol; none: no portfolio)")
    outer.add_argument("--mechanisms", default="", metavar="NAME|FILE,...",
                       help="starting mechanisms: built-in names (" +
                            ", ".join(library.names()) + ") or .py files (e.g. one exported "
                            "with `bilevel artifact RUN mechanisms/NAME.py`)")
    outer.add_argument("--explore-domain", action="append", default=[], metavar="FIELD",
                       help="a field the L2 explore prompt may name (repeatable; default: "
                            "none, so the LLM picks fields itself)")
    cmd.add_argument("--detach", action="store_true", help="print the run id and return")
    add_client_arguments(cmd)
    add_controller_arguments(cmd, embedded=True)
    add_llm_access_arguments(cmd)
    cmd.set_defaults(func=cmd_run)


def run_request(args: argparse.Namespace) -> rpb.CreateRunRequest:
    """The CreateRun request the flags describe (validation happens in the controller)."""
    provider = "replay" if args.replay else args.provider
    kind = args.proposer or ("llm" if provider else "local")
    levels, controller, _ = outer_levels(args)
    preset, task_files = task_of(args)
    return rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset=preset, data_ref=args.data_ref,
                          train_py=args.train_py.read_bytes() if args.train_py else b"",
                          runtime=enums.to_enum(enums.RUNTIMES, args.runtime or "runc"),
                          task_files=task_files),
        search=rpb.SearchSettings(seed=args.seed, frozen_knobs=args.freeze,
                                  min_improvement=args.min_improvement,
                                  keep_rule=enums.to_enum(enums.KEEP_RULES, args.keep_rule),
                                  noise_seeds=args.noise_seeds,
                                  noise_margin_sigma=args.noise_margin, batch_size=args.batch,
                                  pipeline=args.pipeline, final_seeds=args.final_seeds,
                                  pruner=enums.to_enum(enums.PRUNERS, args.pruner),
                                  prune_startup_trials=args.prune_startup,
                                  prune_min_step=args.prune_min_step),
        proposer=rpb.ProposerSettings(kind=enums.to_enum(enums.PROPOSER_KINDS, kind),
                                      mode=enums.to_enum(enums.PROPOSER_MODES, args.mode),
                                      no_memory=args.no_memory),
        budgets=rpb.Budgets(max_trials=args.trials, max_wall_seconds=args.max_minutes * 60,
                            max_llm_tokens=args.max_llm_tokens,
                            max_llm_cost_usd=args.max_llm_cost),
        llm=rpb.LlmSettings(provider=provider or "anthropic", model=args.model,
                            base_url=args.base_url, timeout_seconds=args.llm_timeout,
                            max_attempts=args.llm_attempts,
                            backoff_seconds=args.llm_backoff, replay_run=args.replay),
        outer=rpb.OuterSettings(
            levels=_levels(levels), mechanism_source=args.mechanism_source or "llm",
            config_controller=controller, l15_every_trials=args.l15_every,
            l2_every_trials=args.l2_every, l2_window_trials=args.l2_window,
            mechanisms=[_mechanism(m) for m in args.mechanisms.split(",") if m.strip()],
            explore_domains=args.explore_domain,
            portfolio_arms=[a.strip() for a in args.portfolio.split(",")
                            if a.strip() and args.portfolio != "none"],
            no_portfolio=args.portfolio == "none", portfolio_lead=args.portfolio_lead))


def task_of(args: argparse.Namespace) -> tuple[str, dict[str, bytes]]:
    """(preset, task files) of --task DIR|PRESET or --preset. A name that is neither a
    directory nor a preset is refused saying both, since either may be what was meant."""
    from controller.research.tasks.registry import preset_names

    task = getattr(args, "task", None)
    if not task:
        if args.preset not in preset_names() and Path(args.preset).is_dir():
            raise ConfigError(f"--preset: {args.preset!r} is a directory, not a preset; "
                              f"a task directory goes with --task {args.preset}")
        return args.preset, {}
    if Path(task).is_dir():  # read here: the controller may be on another host
        manifest = load_task_dir(task)  # a bad manifest fails here, naming its key
        document = manifest.document
        space = search_space(document, manifest.knobs, document.read(manifest.editable_source()))
        print(f"task {manifest.name}: {len(space.knobs)} knobs", file=sys.stderr)
        for line in describe_knobs(document, space):
            print(f"  {line}", file=sys.stderr)
        return "", task_bundle.read_task_dir(Path(task))
    if task in preset_names():
        return task, {}
    what = f"{task!r} is a file, not a directory" if Path(task).exists() else \
        f"no directory {task!r}"
    raise ConfigError(f"--task: {what} (and no preset of that name; presets: "
                      f"{', '.join(preset_names())})")


def _levels(levels: list[str]) -> list[rpb.Level]:
    try:
        return [enums.to_enum(enums.LEVELS, lv) for lv in levels]
    except enums.UnknownValue as exc:
        raise ConfigError(f"--levels: {exc}") from None


def proposer_help() -> str:
    """--proposer's help, from the offline proposers' registry."""
    kinds = "; ".join(f"{p.name}: {p.description}" for p in offline.all_proposers())
    return (f"offline, no API key - {kinds}; llm: an LLM proposes (the default with "
            "--provider)")


def proposer_kind(value: str) -> str:
    """--proposer's type: a known kind; a renamed one says what it is called now."""
    if value in RENAMED_PROPOSERS:
        raise argparse.ArgumentTypeError(RENAMED_PROPOSERS[value])
    if value not in PROPOSERS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(PROPOSERS)}")
    return value


def _mechanism(spec: str) -> rpb.InitialMechanism:
    """A built-in name, or a .py file whose stem names it."""
    path = Path(spec.strip())
    if path.suffix == ".py":
        return rpb.InitialMechanism(name=path.stem, source=path.read_text())
    return rpb.InitialMechanism(name=spec.strip())


def embedded_config(args: argparse.Namespace) -> ServerConfig:
    """The in-process controller's config, with this command's LLM key files and base
    URLs: its user's own flags, so `--base-url` is allowed too (their key goes there; no
    one else reaches this controller). Its log goes to the state dir's log file (stderr
    shows warnings only, unless --verbose)."""
    config = server_config(args)
    config = replace(config, llm=config.llm.allowing(
        getattr(args, "base_url", "") or ""))
    log_to_file(config.state_dir)
    return config


def outer_levels(args: argparse.Namespace) -> tuple[list[str], str, bool]:
    """(levels, config controller, whether 1.5 was left out). Offline, Level 1.5 runs
    only when --config-controller rule names it: see L15_OFFLINE_NOTE."""
    provider = "replay" if args.replay else args.provider
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    controller = args.config_controller or ("llm" if provider else "")
    left_out = "1.5" in levels and not controller
    if left_out:
        levels = [lv for lv in levels if lv != "1.5"]
    return levels, controller or "rule", left_out


L15_OFFLINE_NOTE = (
    "note: Level 1.5 is left out of this offline run. Its rule-based controller can only "
    "freeze knobs (offline proposers read no guidance), and on the surrogate it did not "
    "beat Level 1 alone (30 paired seeds x 30 trials: +0.0006 val_bpb, 95 % CI "
    "[-0.0013, +0.0024]). Add --config-controller rule to run it anyway, or --provider "
    "for the LLM controller.")


def cmd_run(args: argparse.Namespace) -> int:
    if outer_levels(args)[2]:
        print(L15_OFFLINE_NOTE, file=sys.stderr)
    try:
        request = run_request(args)
        check_request(request)  # before any controller starts
        check_detach(args)
        return asyncio.run(_create_and_follow(args, request))
    except asyncio.CancelledError:  # Ctrl-C through _catch_ctrl_c: said and cleaned up
        raise KeyboardInterrupt from None
    except FieldError as exc:
        print(f"error: {field_message(exc)}", file=sys.stderr)
        return 2
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _create_and_follow(args: argparse.Namespace, request: rpb.CreateRunRequest) -> int:
    async with open_client(args, lambda: embedded_config(args)) as client:
        try:
            # An in-process controller builds the task image inside CreateRun: show it.
            with showing_build() if client.where == "embedded" else contextlib.nullcontext():
                run = await client.runs.CreateRun(request, metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"error: {describe_for_flags(exc)}", file=sys.stderr)
            return 2
        if args.detach:
            print(run.id)
            return 0
        if client.where == "embedded":
            print(f"run {run.id} (in-process controller; Ctrl-C pauses it and `bilevel "
                  f"resume {run.id}` continues it; log: {state_dir_of(args) / LOG_FILE})",
                  file=sys.stderr)
        else:
            print(f"run {run.id} (Ctrl-C stops following; the run goes on: `bilevel watch "
                  f"{run.id}`)", file=sys.stderr)
        return await follow(client, run, reconnect=client.where != "embedded")


async def follow(client: Client, run: rpb.Run, after_seq: int = 0,
                 reconnect: bool = True) -> int:
    """Show a run's events until it finishes or pauses; reconnects with after_seq if the
    stream drops. Returns 0 when the run succeeded, 3 when it paused. Ctrl-C says what
    becomes of the run before the command stops."""
    view = RunView(run, Console(stderr=True), after_seq)
    seq, attempts = after_seq, 0
    _catch_ctrl_c()
    with view.live():
        while True:
            try:
                request = rpb.WatchRunRequest(run_id=run.id, after_seq=seq)
                async for event in client.runs.WatchRun(request, metadata=client.metadata):
                    _honour_cancel()
                    seq, attempts = event.seq, 0
                    view.update(event)
                _honour_cancel()
                break
            except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels this task)
                view.note(_interrupted(client, run.id))
                raise
            except grpc.aio.AioRpcError as exc:
                retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                if not (reconnect and retry) or attempts >= RECONNECT_ATTEMPTS:
                    view.note(f"error: {describe(exc)}")
                    return 2
                attempts += 1
                view.note(f"connection lost ({exc.code().name}); reconnecting after event "
                          f"{seq}")
                await asyncio.sleep(min(0.5 * attempts, 5.0))
    final = await client.runs.GetRun(rpb.GetRunRequest(run_id=run.id), metadata=client.metadata)
    state = rpb.RunState.Name(final.state).removeprefix("RUN_STATE_").lower()
    if final.state == rpb.RUN_STATE_PAUSED:
        print(f"{final.id}: paused - {printable(final.stop_reason, 2000)}\nresume it with "
              f"`bilevel resume {final.id}`")
        return EXIT_PAUSED
    print(f"{final.id}: {state} - {printable(final.summary, 4000)}")
    if final.state == rpb.RUN_STATE_SUCCEEDED and final.best_trial > 0 and \
            "fresh paired seeds" in final.summary:
        print(f"  final check (best vs baseline on fresh seeds): bilevel artifact {final.id} "
              "final_check.json")
    for m in final.mechanisms:
        status = enums.label(enums.MECHANISM_STATUSES, m.status)
        print(f"  mechanism {printable(m.name)} ({printable(m.origin)}): {status}; "
              f"{m.calls} calls, {m.effective} effective - "
              f"{printable(m.finding or status, 2000)}")
    if final.mechanisms:
        print(f"  report: bilevel artifact {final.id} mechanisms.md")
    return 0 if final.state == rpb.RUN_STATE_SUCCEEDED else 1


def _catch_ctrl_c() -> None:
    """Ctrl-C cancels the following task through our own handler, which also leaves a
    mark that `_honour_cancel` checks at every event. asyncio.run's handler is not
    enough: it is installed only when SIGINT's handler is Python's default at start,
    and under load a Ctrl-C was seen to vanish (the run went on to its end, exit 0). A
    second Ctrl-C falls to Python's default handler: KeyboardInterrupt at once."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    _CTRL_C.clear()  # a mark from an earlier follow in this process is not this one's
    if task is None:
        return

    def on_ctrl_c() -> None:
        _CTRL_C.set()
        loop.remove_signal_handler(signal.SIGINT)
        task.cancel()

    # Not the main thread, or no Unix signals: asyncio.run's own handling stays.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_ctrl_c)


_CTRL_C = threading.Event()


def _honour_cancel() -> None:
    """Raise CancelledError if Ctrl-C came or this task was asked to stop, but the
    cancellation was absorbed on the way, e.g. inside the stream's own awaits."""
    task = asyncio.current_task()
    if _CTRL_C.is_set() or (task is not None and task.cancelling()):
        raise asyncio.CancelledError


def _interrupted(client: Client, run_id: str) -> str:
    """What Ctrl-C does to the followed run: an in-process controller pauses it on its
    way out; any other controller goes on running it."""
    if getattr(client, "where", "server") == "embedded":
        return (f"interrupted: pausing run {run_id}; `bilevel resume {run_id}` continues "
                "it")
    return (f"interrupted: stopped following run {run_id}; it goes on in its controller "
            f"(`bilevel watch {run_id}`)")


_View = RunView  # the name tests and older callers use
