"""convert.py is the one place API enums meet internal values: both directions, refusals
that name the field, and the echoed request showing only the settings that apply."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api import convert, enums
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.errors import FieldError
from controller.research.settings import RunSettings
from controller.sandbox.caps import LimitCaps
from controller.sandbox.spec import Limits


def _unknown(number: int) -> Any:
    """An enum number no table lists, as a newer or hand-built client may send."""
    return number


def _request(**parts: object) -> rpb.CreateRunRequest:
    request = rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                                   budgets=rpb.Budgets(max_trials=3))
    for name, value in parts.items():
        getattr(request, name).CopyFrom(value)
    return request


def test_enums_map_to_the_internal_values_and_unspecified_to_the_defaults() -> None:
    settings = convert.run_settings(_request(
        task=rpb.TaskSpec(preset="surrogate", runtime=spb.RUNTIME_RUNSC),
        search=rpb.SearchSettings(keep_rule=rpb.KEEP_RULE_NOISE, noise_margin_sigma=3.0),
        proposer=rpb.ProposerSettings(kind=rpb.PROPOSER_KIND_LLM,
                                      mode=rpb.PROPOSER_MODE_CODE),
        outer=rpb.OuterSettings(levels=[rpb.LEVEL_1, rpb.LEVEL_1_5, rpb.LEVEL_2],
                                l15_every_trials=4)))
    assert settings.task.runtime == "runsc"
    assert (settings.search.keep_rule, settings.search.noise_margin) == ("noise", 3.0)
    assert (settings.proposer.kind, settings.proposer.mode) == ("llm", "code")
    assert settings.outer.levels == ("1", "1.5", "2") and settings.outer.l15_every == 4
    default = convert.run_settings(_request())
    assert (default.task.runtime, default.search.keep_rule, default.proposer.kind,
            default.proposer.mode, default.outer.levels) == (
        "runc", "greedy", "local", "params", ("1",))


@pytest.mark.parametrize(("request_", "field"), [
    (_request(task=rpb.TaskSpec(preset="surrogate", runtime=_unknown(7))), "task.runtime"),
    (_request(search=rpb.SearchSettings(keep_rule=_unknown(9))), "search.keep_rule"),
    (_request(proposer=rpb.ProposerSettings(kind=_unknown(42))), "proposer.kind"),
    (_request(proposer=rpb.ProposerSettings(mode=_unknown(3))), "proposer.mode"),
    (_request(outer=rpb.OuterSettings(levels=[rpb.LEVEL_1, rpb.LEVEL_UNSPECIFIED])),
     "outer.levels[1]"),
    (_request(outer=rpb.OuterSettings(levels=[rpb.LEVEL_1, _unknown(17)])), "outer.levels[1]"),
])
def test_a_value_outside_the_set_is_refused_naming_the_field(
        request_: rpb.CreateRunRequest, field: str) -> None:
    with pytest.raises(FieldError) as info:
        convert.run_settings(request_)
    assert info.value.field == field


def test_execute_runtime_outside_the_set_names_the_field() -> None:
    with pytest.raises(FieldError) as info:
        convert.job_spec(spb.ExecuteRequest(command=["true"], runtime=_unknown(5)), Limits(),
                         LimitCaps())
    assert info.value.field == "runtime"
    spec = convert.job_spec(spb.ExecuteRequest(command=["true"], runtime=spb.RUNTIME_RUNSC),
                            Limits(), LimitCaps())
    assert spec.runtime == "runsc"


def test_the_echo_round_trips_and_shows_only_settings_that_apply() -> None:
    offline = convert.run_settings(_request())
    echo = convert.echo_request(offline)
    assert echo.task.runtime == spb.RUNTIME_RUNC and echo.proposer.kind == rpb.PROPOSER_KIND_LOCAL
    assert not echo.HasField("llm"), "an offline run has no LLM settings"
    assert echo.proposer.mode == rpb.PROPOSER_MODE_UNSPECIFIED  # mode is the LLM's
    assert echo.proposer.history_trials == 0  # so is the prompt's history
    assert echo.search.noise_seeds == 0 and echo.search.noise_margin_sigma == 0  # greedy
    assert echo.outer.levels == [rpb.LEVEL_1] and echo.outer.l2_every_trials == 0
    assert echo.outer.mechanism_source == "" and echo.outer.config_controller == ""
    assert convert.run_settings(echo) == offline, "the echo is a request for the same run"
    apart = convert.run_settings(_request(proposer=rpb.ProposerSettings(no_memory=True)))
    assert convert.echo_request(apart).proposer.no_memory, "offline runs write lessons too"

    llm = convert.run_settings(_request(
        search=rpb.SearchSettings(keep_rule=rpb.KEEP_RULE_NOISE),
        proposer=rpb.ProposerSettings(kind=rpb.PROPOSER_KIND_LLM),
        outer=rpb.OuterSettings(levels=[rpb.LEVEL_1, rpb.LEVEL_2],
                                mechanism_source="library")))
    echo = convert.echo_request(llm)
    assert echo.HasField("llm") and echo.llm.provider == "anthropic"
    assert echo.proposer.mode == rpb.PROPOSER_MODE_PARAMS and echo.proposer.step == 0
    assert echo.search.noise_seeds == llm.search.noise_seeds
    assert echo.outer.l2_every_trials == llm.outer.l2_every
    assert echo.outer.levels == [rpb.LEVEL_1, rpb.LEVEL_2]
    assert echo.outer.l15_every_trials == 0  # no Level 1.5 in this run
    assert convert.run_settings(echo) == llm


def test_every_internal_value_has_an_enum_and_back() -> None:
    from controller.research.settings import KEEP_RULES, LEVELS, MODES, PROPOSERS
    from controller.sandbox.spec import RUNTIMES
    from controller.store import mechanisms

    statuses = {mechanisms.PROPOSED, mechanisms.GATE_REJECTED, mechanisms.ACTIVE,
                mechanisms.KEPT, mechanisms.REVERTED, mechanisms.DISABLED}
    for table, values in [(enums.RUNTIMES, RUNTIMES), (enums.KEEP_RULES, KEEP_RULES),
                          (enums.PROPOSER_MODES, MODES), (enums.PROPOSER_KINDS, PROPOSERS),
                          (enums.LEVELS, LEVELS), (enums.MECHANISM_STATUSES, statuses)]:
        assert set(table) == set(values)
        for value in values:
            assert enums.from_enum(table, enums.to_enum(table, value), None) == value
    assert RunSettings().task.runtime in enums.RUNTIMES


def test_min_improvement_is_read_under_its_new_and_its_deprecated_name() -> None:
    def rule(**search: float) -> float:
        return convert.run_settings(_request(
            search=rpb.SearchSettings(**search))).search.min_improvement  # type: ignore[arg-type]

    assert rule(min_improvement=0.01) == rule(min_improvement_bpb=0.01) == 0.01
    assert rule(min_improvement=0.01, min_improvement_bpb=0.01) == 0.01
    with pytest.raises(FieldError) as info:
        rule(min_improvement=0.01, min_improvement_bpb=0.02)
    assert info.value.field == "search.min_improvement"
    echo = convert.echo_request(convert.run_settings(_request(
        search=rpb.SearchSettings(min_improvement=0.01))))
    assert echo.search.min_improvement == echo.search.min_improvement_bpb == 0.01


def test_loss_fields_carry_the_stored_loss_and_so_do_their_deprecated_names() -> None:
    from controller.store.memory import Lesson
    from controller.store.records import EventKind, EventRecord, RunRecord, RunState

    run = convert.run(RunRecord("run-x", RunState.SUCCEEDED, RunSettings().to_dict(), 0.0,
                                0.0, trials_done=3, baseline_val_bpb=-0.5,
                                best_val_bpb=-0.75, best_trial=2))
    assert (run.baseline_loss, run.best_loss) == (-0.5, -0.75)
    assert (run.baseline_val_bpb, run.best_val_bpb) == (-0.5, -0.75)

    def event(kind: EventKind, **payload: object) -> rpb.RunEvent:
        return convert.event(EventRecord("run-x", 1, 0.0, kind, payload))

    finished = event(EventKind.TRIAL_FINISHED, trial=1, status="keep", val_bpb=-0.75,
                     memory_gb=0.0, metrics_json="{}", job_status="ok", seconds=1.0,
                     description="d").trial_finished
    assert finished.loss == finished.val_bpb == -0.75
    crashed = event(EventKind.TRIAL_FINISHED, trial=2, status="crash", val_bpb=None,
                    memory_gb=0.0, metrics_json="{}", job_status="error", seconds=1.0,
                    description="d").trial_finished
    assert not crashed.HasField("loss") and not crashed.HasField("val_bpb")
    best = event(EventKind.NEW_BEST, trial=1, val_bpb=-0.75, previous_val_bpb=-0.5).new_best
    assert (best.loss, best.previous_loss) == (best.val_bpb, best.previous_val_bpb) == (
        -0.75, -0.5)
    first = event(EventKind.NEW_BEST, trial=0, val_bpb=-0.5, previous_val_bpb=None).new_best
    assert not first.HasField("previous_loss")
    end = event(EventKind.RUN_FINISHED, state="succeeded", reason="r",
                baseline_val_bpb=-0.5, best_val_bpb=-0.75).run_finished
    assert (end.baseline_loss, end.best_loss) == (end.baseline_val_bpb, end.best_val_bpb)
    lesson = convert.lesson(Lesson("t", "run-x", "helped", "text", delta=-0.25))
    assert lesson.delta_loss == lesson.delta_bpb == -0.25
