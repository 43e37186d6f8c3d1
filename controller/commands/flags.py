"""`bilevel run`'s flags checked before anything starts, and errors that name the flag a
user typed (`--trials`) rather than the request field (`budgets.max_trials`)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from controller.api.errors import describe, details_of
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.errors import FieldError

# Request field -> the `bilevel run` flag that sets it (old and new proto names).
FIELD_FLAGS = {
    "task.preset": "--preset", "task.train_py": "--train-py", "task.data_ref": "--data-ref",
    "task.runtime": "--runtime", "search.seed": "--seed", "search.frozen_knobs": "--freeze",
    "search.min_improvement": "--min-improvement",
    "search.min_improvement_bpb": "--min-improvement", "search.keep_rule": "--keep-rule",
    "search.noise_seeds": "--noise-seeds", "search.noise_margin": "--noise-margin",
    "search.noise_margin_sigma": "--noise-margin", "search.batch_size": "--batch",
    "search.final_seeds": "--final-seeds",
    "search.pruner": "--pruner", "search.prune_startup_trials": "--prune-startup",
    "search.prune_min_step": "--prune-min-step",
    "proposer.kind": "--proposer", "proposer.mode": "--mode",
    "budgets.max_trials": "--trials", "budgets.max_wall_seconds": "--max-minutes",
    "budgets.max_llm_tokens": "--max-llm-tokens", "budgets.max_llm_cost_usd": "--max-llm-cost",
    "llm.provider": "--provider", "llm.model": "--model", "llm.base_url": "--base-url",
    "llm.timeout_seconds": "--llm-timeout", "llm.max_attempts": "--llm-attempts",
    "llm.backoff_seconds": "--llm-backoff", "llm.replay_run": "--replay",
    "outer.levels": "--levels", "outer.mechanism_source": "--mechanism-source",
    "outer.config_controller": "--config-controller", "outer.l15_every": "--l15-every",
    "outer.l15_every_trials": "--l15-every", "outer.l2_every": "--l2-every",
    "outer.l2_every_trials": "--l2-every", "outer.l2_window": "--l2-window",
    "outer.l2_window_trials": "--l2-window", "outer.mechanisms": "--mechanisms",
    "outer.explore_domains": "--explore-domain",
}


def flag_of(field: str) -> str:
    return FIELD_FLAGS.get(field, field)


def check_request(request: rpb.CreateRunRequest) -> None:
    """What the controller would refuse, refused here first (FieldError naming the
    request field): the settings' own checks and the preset's name."""
    from controller.api import convert

    settings = convert.run_settings(request)
    if request.task.task_files:  # a task directory: its manifest names the task
        from dataclasses import replace

        settings = replace(settings, task=replace(settings.task, preset="task_files"))
    settings.validate()
    if request.task.preset:
        from controller.research.tasks.registry import preset_names

        if request.task.preset not in preset_names():
            raise FieldError("task.preset", f"unknown preset {request.task.preset!r}; "
                             f"choose one of {', '.join(preset_names())}")


def field_message(exc: FieldError) -> str:
    return f"{flag_of(exc.field)}: {exc.reason}"


def describe_for_flags(error: grpc.aio.AioRpcError) -> str:
    """describe(), with an INVALID_ARGUMENT about a request field told as its flag."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        for detail in details_of(error):
            if isinstance(detail, error_details_pb2.BadRequest) and detail.field_violations:
                v = detail.field_violations[0]
                if v.field in FIELD_FLAGS:
                    return f"{FIELD_FLAGS[v.field]}: {v.description}"
    return describe(error)
