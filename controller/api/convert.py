"""Map bilevel.v1 messages to domain objects and back. No decisions are made here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from google.protobuf.timestamp_pb2 import Timestamp

from controller.api import enums
from controller.api.enums import UnknownValue
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.errors import FieldError
from controller.llm.settings import LLMSettings
from controller.research.level2.report import Summary
from controller.research.settings import (
    Budgets,
    InitialMechanism,
    OuterSettings,
    ProposerSettings,
    RunSettings,
    SearchSettings,
    TaskSettings,
)
from controller.sandbox import bounded_json, job_output
from controller.sandbox.backend import check_data_ids
from controller.sandbox.caps import LimitCaps
from controller.sandbox.spec import (
    DataMount,
    ExceptionInfo,
    JobResult,
    JobSpec,
    Limits,
    Status,
)
from controller.store.memory import Lesson
from controller.store.records import EventKind, EventRecord, RunRecord, RunState, TrialStatus

_LIMIT_FIELDS = ("wall_seconds", "memory_bytes", "cpus", "pids", "output_bytes",
                 "returned_file_bytes", "tmp_bytes", "disk_bytes")


def _named(table: Mapping[str, int], number: int, field: str, default: str | None) -> str:
    """An enum field's internal value; a number outside the set names the field."""
    try:
        return enums.from_enum(table, number, default)
    except UnknownValue as exc:
        raise FieldError(field, str(exc)) from None


# Sandbox


def job_spec(request: spb.ExecuteRequest, defaults: Limits, caps: LimitCaps) -> JobSpec:
    """The request as a validated JobSpec; zero limits take the server's defaults, and
    none may exceed the server's caps."""
    limits = Limits(**{name: getattr(request.limits, name) or getattr(defaults, name)
                       for name in _LIMIT_FIELDS})
    caps.check(limits)
    spec = JobSpec(
        files=dict(request.files), command=tuple(request.command), limits=limits,
        runtime=_named(enums.RUNTIMES, request.runtime, "runtime", "runc"),
        gpu_ids=tuple(request.gpu_ids),
        data_mounts=tuple(DataMount(source=m.volume, target=m.target)
                          for m in request.data_mounts),
        env=dict(request.env))
    check_data_ids(spec)  # a request mounts data only by a published id
    spec.validate()
    return spec


def job_status(status: Status) -> spb.JobStatus:
    return cast(spb.JobStatus, spb.JobStatus.Value(f"JOB_STATUS_{status.name}"))


def job_status_name(value: str) -> spb.JobStatus:
    """A stored job status ("ok", "timeout", "over_budget", ...) as the enum; unknown
    (e.g. "invalid": nothing ran) -> UNSPECIFIED."""
    try:
        return cast(spb.JobStatus, spb.JobStatus.Value(f"JOB_STATUS_{value.upper()}"))
    except ValueError:
        return spb.JOB_STATUS_UNSPECIFIED


def exception_info(raw: dict[str, Any] | None) -> spb.ExceptionInfo | None:
    """A stored exception record (written by a job: untrusted) as the message."""
    if not raw:
        return None
    return _exception(job_output.exception_info(raw, required=False))


def _exception(exc: ExceptionInfo | None) -> spb.ExceptionInfo | None:
    # int32 and UTF-8 are checked here too: a value the message refuses would fail the
    # whole reply (or the run's event stream), not just this job.
    if exc is None:
        return None
    return spb.ExceptionInfo(
        type=_utf8(exc.type), message=_utf8(exc.message),
        frames=[spb.Frame(filename=_utf8(f.filename), lineno=bounded_json.int32(f.lineno),
                          name=_utf8(f.name), line=_utf8(f.line)) for f in exc.frames])


def _utf8(text: str) -> str:
    """`text` with lone surrogates replaced: protobuf refuses them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def job_result(result: JobResult) -> spb.JobResult:
    exit_code = result.exit_code
    return spb.JobResult(
        status=job_status(result.status),
        exit_code=None if exit_code is None else bounded_json.int32(exit_code, default=-1),
        stdout_head=_utf8(result.stdout_head), stdout_tail=_utf8(result.stdout_tail),
        stderr_head=_utf8(result.stderr_head), stderr_tail=_utf8(result.stderr_tail),
        output_bytes=result.output_bytes, exception=_exception(result.exception),
        metrics_json=json.dumps(result.metrics), files=result.files,
        timings=spb.Timings(create_seconds=result.timings.create_s,
                            start_seconds=result.timings.start_s,
                            run_seconds=result.timings.run_s,
                            teardown_seconds=result.timings.teardown_s,
                            warm=result.timings.warm),
        detail=_utf8(result.detail),
        cpu_seconds=result.cpu_seconds)


# Runs


def run_settings(request: rpb.CreateRunRequest) -> RunSettings:
    """Zero values mean defaults; validation happens in RunSettings.validate()."""
    train_py: str | None = None
    if request.task.train_py:
        try:
            train_py = request.task.train_py.decode("utf-8")
        except UnicodeDecodeError:
            raise FieldError("task.train_py", "must be UTF-8 text") from None
    proposer, search, llm = request.proposer, request.search, request.llm
    defaults, llm_defaults = ProposerSettings(), LLMSettings()
    return RunSettings(
        task=TaskSettings(preset=request.task.preset, train_py=train_py,
                          data_ref=request.task.data_ref, in_process=request.task.in_process,
                          runtime=_named(enums.RUNTIMES, request.task.runtime,
                                         "task.runtime", "runc")),
        search=SearchSettings(seed=search.seed, frozen_knobs=tuple(search.frozen_knobs),
                              min_improvement=_min_improvement(search),
                              keep_rule=_named(enums.KEEP_RULES, search.keep_rule,
                                               "search.keep_rule", "greedy"),
                              noise_seeds=search.noise_seeds or SearchSettings().noise_seeds,
                              noise_margin=search.noise_margin_sigma or 2.0,
                              batch_size=search.batch_size or 1, pipeline=search.pipeline,
                              final_seeds=_opt(search, "final_seeds",
                                               SearchSettings().final_seeds),
                              pruner=_named(enums.PRUNERS, search.pruner, "search.pruner",
                                            "none"),
                              prune_startup_trials=_opt(search, "prune_startup_trials",
                                                        SearchSettings().prune_startup_trials),
                              prune_min_step=search.prune_min_step,
                              prune_reduction=search.prune_reduction or 3),
        proposer=ProposerSettings(
            kind=_named(enums.PROPOSER_KINDS, proposer.kind, "proposer.kind", "local"),
            max_changes=proposer.max_changes or 2, step=proposer.step or 0.5,
            mode=_named(enums.PROPOSER_MODES, proposer.mode, "proposer.mode", "params"),
            max_invalid_retries=_opt(proposer, "max_invalid_retries",
                                     defaults.max_invalid_retries),
            max_fix_attempts=_opt(proposer, "max_fix_attempts", defaults.max_fix_attempts),
            history_trials=proposer.history_trials or defaults.history_trials,
            use_memory=not proposer.no_memory),
        budgets=Budgets(max_trials=request.budgets.max_trials,
                        max_wall_seconds=request.budgets.max_wall_seconds,
                        max_llm_tokens=request.budgets.max_llm_tokens,
                        max_llm_cost_usd=request.budgets.max_llm_cost_usd),
        llm=LLMSettings(
            provider=llm.provider or "anthropic", model=llm.model, base_url=llm.base_url,
            max_tokens=llm.max_tokens or llm_defaults.max_tokens,
            temperature=_opt(llm, "temperature", -1.0),
            timeout_seconds=llm.timeout_seconds or llm_defaults.timeout_seconds,
            max_attempts=llm.max_attempts or llm_defaults.max_attempts,
            backoff_seconds=_opt(llm, "backoff_seconds", llm_defaults.backoff_seconds),
            replay_run=llm.replay_run,
            price_input_per_mtok=_opt(llm, "price_input_usd_per_mtok", -1.0),
            price_output_per_mtok=_opt(llm, "price_output_usd_per_mtok", -1.0)),
        outer=outer_settings(request.outer))


def outer_settings(o: rpb.OuterSettings) -> OuterSettings:
    d = OuterSettings()
    levels = tuple(_named(enums.LEVELS, lv, f"outer.levels[{i}]", None)
                   for i, lv in enumerate(o.levels))
    return OuterSettings(
        levels=levels or d.levels,
        mechanism_source=o.mechanism_source or d.mechanism_source,
        config_controller=o.config_controller or d.config_controller,
        l15_every=o.l15_every_trials or d.l15_every,
        l2_every=o.l2_every_trials or d.l2_every,
        l2_window=o.l2_window_trials, max_l2_rounds=o.max_l2_rounds,
        mechanisms=tuple(InitialMechanism(m.name, m.source) for m in o.mechanisms),
        explore_domains=tuple(o.explore_domains),
        library_prior_runs=tuple(o.library_prior_runs),
        portfolio=() if o.no_portfolio else (tuple(o.portfolio_arms) or None),
        portfolio_lead=o.portfolio_lead)


def _min_improvement(search: rpb.SearchSettings) -> float:
    """`min_improvement`, or its deprecated name `min_improvement_bpb` when it is 0."""
    new, old = search.min_improvement, search.min_improvement_bpb
    if new and old and new != old:
        raise FieldError("search.min_improvement", f"is {new} but its deprecated name "
                         f"min_improvement_bpb says {old}: set only min_improvement")
    return new or old


def _opt(message: Any, name: str, default: Any) -> Any:
    """An `optional` proto field's value, or the default when it is unset."""
    return getattr(message, name) if message.HasField(name) else default


def create_request(settings: RunSettings) -> rpb.CreateRunRequest:
    t, s, p, b, llm = (settings.task, settings.search, settings.proposer, settings.budgets,
                       settings.llm)
    return rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset=t.preset, train_py=(t.train_py or "").encode(),
                          data_ref=t.data_ref, runtime=enums.to_enum(enums.RUNTIMES, t.runtime),
                          task_sha256=t.task_sha256, metric=t.metric,
                          maximize=t.direction == "maximize",
                          metric_self_reported=t.self_reported, in_process=t.in_process),
        search=rpb.SearchSettings(seed=s.seed, frozen_knobs=s.frozen_knobs,
                                  min_improvement=s.min_improvement,
                                  min_improvement_bpb=s.min_improvement,
                                  keep_rule=enums.to_enum(enums.KEEP_RULES, s.keep_rule),
                                  noise_seeds=s.noise_seeds, noise_margin_sigma=s.noise_margin,
                                  batch_size=s.batch_size, pipeline=s.pipeline,
                                  final_seeds=s.final_seeds,
                                  pruner=enums.to_enum(enums.PRUNERS, s.pruner),
                                  prune_startup_trials=s.prune_startup_trials,
                                  prune_min_step=s.prune_min_step,
                                  prune_reduction=s.prune_reduction),
        proposer=rpb.ProposerSettings(
            kind=enums.to_enum(enums.PROPOSER_KINDS, p.kind), max_changes=p.max_changes,
            step=p.step, mode=enums.to_enum(enums.PROPOSER_MODES, p.mode),
            max_invalid_retries=p.max_invalid_retries, max_fix_attempts=p.max_fix_attempts,
            history_trials=p.history_trials, no_memory=not p.use_memory),
        budgets=rpb.Budgets(max_trials=b.max_trials, max_wall_seconds=b.max_wall_seconds,
                            max_llm_tokens=b.max_llm_tokens,
                            max_llm_cost_usd=b.max_llm_cost_usd),
        llm=rpb.LlmSettings(
            provider=llm.provider, model=llm.model, base_url=llm.base_url,
            max_tokens=llm.max_tokens,
            temperature=llm.temperature if llm.temperature >= 0 else None,
            timeout_seconds=llm.timeout_seconds, max_attempts=llm.max_attempts,
            backoff_seconds=llm.backoff_seconds, replay_run=llm.replay_run,
            price_input_usd_per_mtok=(llm.price_input_per_mtok
                                      if llm.price_input_per_mtok >= 0 else None),
            price_output_usd_per_mtok=(llm.price_output_per_mtok
                                       if llm.price_output_per_mtok >= 0 else None)),
        outer=rpb.OuterSettings(
            levels=[enums.to_enum(enums.LEVELS, lv) for lv in settings.outer.levels],
            mechanism_source=settings.outer.mechanism_source,
            config_controller=settings.outer.config_controller,
            l15_every_trials=settings.outer.l15_every,
            l2_every_trials=settings.outer.l2_every,
            l2_window_trials=settings.outer.l2_window,
            max_l2_rounds=settings.outer.max_l2_rounds,
            mechanisms=[rpb.InitialMechanism(name=m.name, source=m.source)
                        for m in settings.outer.mechanisms],
            explore_domains=settings.outer.explore_domains,
            library_prior_runs=settings.outer.library_prior_runs,
            portfolio_arms=settings.outer.portfolio or (),
            no_portfolio=settings.outer.portfolio == (),
            portfolio_lead=settings.outer.portfolio_lead))


def echo_request(settings: RunSettings) -> rpb.CreateRunRequest:
    """The resolved settings a Run shows: only those that apply to this run, so a reader
    is not told about an LLM, a noise margin or a Level-2 cadence the run never uses."""
    out = create_request(settings)
    out.task.ClearField("train_py")  # large; fetch it with GetArtifact
    p, search, outer = settings.proposer, settings.search, settings.outer
    if p.kind != "llm":
        # no_memory stays: it also stops any run writing lessons and Level 2 reading them
        for name in ("mode", "max_invalid_retries", "max_fix_attempts", "history_trials"):
            out.proposer.ClearField(name)
    if p.kind not in ("local", "llm"):
        out.proposer.ClearField("max_changes")
    if p.kind != "local":
        out.proposer.ClearField("step")
    if search.pruner == "none":
        for name in ("prune_startup_trials", "prune_min_step", "prune_reduction"):
            out.search.ClearField(name)
    elif search.pruner != "asha":
        out.search.ClearField("prune_reduction")
    if search.keep_rule == "greedy":
        out.search.ClearField("noise_seeds")
        out.search.ClearField("noise_margin_sigma")
    else:
        out.search.ClearField("min_improvement")
        out.search.ClearField("min_improvement_bpb")
    if not settings.uses_llm():
        out.ClearField("llm")
        out.budgets.ClearField("max_llm_tokens")
        out.budgets.ClearField("max_llm_cost_usd")
    elif settings.llm.provider != "replay":
        out.llm.ClearField("replay_run")
    if "1.5" not in outer.levels:
        out.outer.ClearField("config_controller")
        out.outer.ClearField("l15_every_trials")
    if "2" not in outer.levels:
        for name in ("mechanism_source", "l2_every_trials", "l2_window_trials",
                     "max_l2_rounds", "explore_domains", "library_prior_runs",
                     "portfolio_arms", "no_portfolio", "portfolio_lead"):
            out.outer.ClearField(name)
    return out


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def run_state(state: RunState | str) -> rpb.RunState:
    return cast(rpb.RunState, rpb.RunState.Value(f"RUN_STATE_{RunState(state).name}"))


def trial_status(status: TrialStatus | str | None) -> rpb.TrialStatus:
    if status is None:
        return rpb.TRIAL_STATUS_UNSPECIFIED
    return cast(rpb.TrialStatus,
                rpb.TrialStatus.Value(f"TRIAL_STATUS_{TrialStatus(status).name}"))


def mechanism(s: Summary) -> rpb.MechanismSummary:
    return rpb.MechanismSummary(name=s.row.name, origin=s.row.origin, field=s.row.field,
                                status=_mechanism_status(s.row.status), calls=s.calls,
                                effective=s.effective,
                                failures=s.failures, injected=s.injected, reason=s.row.reason,
                                finding=s.finding)


def _mechanism_status(status: str) -> rpb.MechanismStatus:
    """A stored row status as the enum; one the API does not list -> UNSPECIFIED."""
    return enums.MECHANISM_STATUSES.get(status, rpb.MECHANISM_STATUS_UNSPECIFIED)


def run(record: RunRecord, mechanisms: list[Summary] | None = None) -> rpb.Run:
    return rpb.Run(
        id=record.id, state=run_state(record.state),
        request=echo_request(RunSettings.from_dict(record.settings)),
        created_at=_ts(record.created_at), updated_at=_ts(record.updated_at),
        trials_done=record.trials_done, baseline_loss=record.baseline_val_bpb,
        best_loss=record.best_val_bpb,
        baseline_val_bpb=record.baseline_val_bpb, best_val_bpb=record.best_val_bpb,
        best_trial=record.best_trial if record.best_trial is not None else 0,
        last_status=trial_status(record.last_status), stop_reason=record.stop_reason,
        elapsed_seconds=record.elapsed_seconds, llm_tokens_used=record.llm_tokens_used,
        summary=record.summary, noise_sigma=record.noise_sigma,
        llm_cost_usd=record.llm_cost_usd,
        mechanisms=[mechanism(s) for s in mechanisms or []], owner=record.owner)


def event(record: EventRecord) -> rpb.RunEvent:
    p = record.payload
    out = rpb.RunEvent(seq=record.seq, run_id=record.run_id, time=_ts(record.time))
    if record.kind is EventKind.RUN_STARTED:
        out.run_started.CopyFrom(rpb.RunEvent.RunStarted(**p))
    elif record.kind is EventKind.TRIAL_PROPOSED:
        out.trial_proposed.CopyFrom(rpb.RunEvent.TrialProposed(**p))
    elif record.kind is EventKind.TRIAL_STARTED:
        out.trial_started.CopyFrom(rpb.RunEvent.TrialStarted(**p))
    elif record.kind is EventKind.TRIAL_FINISHED:
        out.trial_finished.CopyFrom(rpb.RunEvent.TrialFinished(
            trial=p["trial"], status=trial_status(p["status"]), loss=p["val_bpb"],
            val_bpb=p["val_bpb"],
            memory_gib=p["memory_gb"], metrics_json=p["metrics_json"],
            job_status=job_status_name(p["job_status"]),
            exception=exception_info(p.get("exception")), run_seconds=p["seconds"],
            description=p["description"], hypothesis=p.get("hypothesis", ""),
            started_at=_ts(p.get("started_at", 0.0)), ended_at=_ts(p.get("ended_at", 0.0)),
            llm_tokens=p.get("llm_tokens", 0), llm_cost_usd=p.get("llm_cost_usd", 0.0),
            mechanisms_json=p.get("mechanisms_json", ""),
            proposal_source=p.get("proposal_source", ""), node_id=p.get("node", ""),
            arm=p.get("arm") or "", arm_probability=p.get("arm_probability"),
            llm_failure=p.get("llm_failure") or ""))
    elif record.kind is EventKind.NEW_BEST:
        out.new_best.CopyFrom(rpb.RunEvent.NewBest(
            trial=p["trial"], loss=p["val_bpb"], previous_loss=p.get("previous_val_bpb"),
            val_bpb=p["val_bpb"], previous_val_bpb=p.get("previous_val_bpb")))
    elif record.kind is EventKind.RUN_FINISHED:
        out.run_finished.CopyFrom(rpb.RunEvent.RunFinished(
            state=run_state(p["state"]), reason=p["reason"],
            baseline_loss=p.get("baseline_val_bpb"), best_loss=p.get("best_val_bpb"),
            baseline_val_bpb=p.get("baseline_val_bpb"), best_val_bpb=p.get("best_val_bpb"),
            improved=bool(p.get("improved")), summary=p.get("summary", "")))
    elif record.kind is EventKind.RUN_PAUSED:
        out.run_paused.CopyFrom(rpb.RunEvent.RunPaused(reason=p["reason"]))
    elif record.kind is EventKind.CONFIG_ADJUSTED:
        out.config_adjusted.CopyFrom(rpb.RunEvent.ConfigAdjusted(
            trial=p["trial"], controller=p["controller"], applied=p["applied"],
            freeze=p.get("freeze", []), unfreeze=p.get("unfreeze", []),
            frozen=p.get("frozen", []), strategy=p.get("strategy", ""),
            guidance=p.get("guidance", ""), restart_from_trial=p.get("restart_from_trial"),
            rejected=p.get("rejected", []), error=p.get("error", "")))
    elif record.kind is EventKind.MECHANISM:
        out.mechanism.CopyFrom(rpb.RunEvent.Mechanism(**p))
    elif record.kind is EventKind.TRIAL_PROGRESS:
        out.trial_progress.CopyFrom(rpb.RunEvent.TrialProgress(
            trial=p["trial"], step=p["step"], value=p.get("value"), points=p.get("points", 0),
            pruned=p.get("pruned", ""), curve_json=p.get("curve_json", "")))
    return out


def lesson(record: Lesson) -> rpb.Lesson:
    return rpb.Lesson(id=record.id, task=record.task, run_id=record.run_id, kind=record.kind,
                      text=record.text, delta_loss=record.delta, delta_bpb=record.delta,
                      created_at=_ts(record.created_at), owner=record.owner)
