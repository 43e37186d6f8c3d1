"""What an ablation asks the controller for, checked through the API's own conversion
(convert.run_settings, the path CreateRun takes): the surrogate scored in-process, no
per-run end-of-run check, the Level-1.5/2 cadence, a Level-2 prior only for arms with
Level 2, no memory, a prior taken from an earlier ablation's Level-2 runs only, and a
portfolio lead from its fixed-strategy arms' fresh-seed gains."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.analysis import ablation
from controller.analysis.ablation import AblationSpec, Cell
from controller.api import convert
from controller.errors import FieldError
from controller.research.settings import OuterSettings


def _spec(**kw: object) -> AblationSpec:
    spec = AblationSpec(id="abl-x", task="surrogate", repeats=2, trials=30, seed=5, **kw)  # type: ignore[arg-type]
    arms, _ = ablation.catalogue(False, spec.schedule_batch)
    spec.arms = [arms[n] for n in ("A", "B", "D", "C-noop")]
    return spec


def test_every_arm_runs_in_process_without_memory_or_its_own_final_check() -> None:
    spec = _spec(in_process=True, l15_every=3, l2_every=6, l2_window=8,
                 prior_runs=["run-abc123"])
    for arm in spec.arms:
        settings = convert.run_settings(ablation.run_request(spec, arm, 1))
        settings.validate()
        assert settings.task.in_process and settings.search.final_seeds == 0
        assert settings.search.seed == 5 + 1000 and not settings.proposer.use_memory
        assert settings.search.batch_size == 1  # --schedule-batch 1: every arm alike
        if arm.name == "A":
            assert settings.outer == OuterSettings()
            continue
        assert settings.outer.l15_every == 3 and settings.outer.l2_every == 6
        assert settings.outer.l2_window == 8
        # Only an arm whose Level 2 picks mechanisms learns from the prior.
        has_l2 = "2" in arm.levels
        assert settings.outer.library_prior_runs == (("run-abc123",) if has_l2 else ())
    fresh = convert.run_settings(ablation.reeval_request(spec, "X = 1\n", 0))
    assert fresh.task.in_process and fresh.search.final_seeds == 0
    assert fresh.search.seed == ablation.FRESH_SEED_BASE + 5


def test_sandboxed_by_default_outside_the_in_process_surrogate() -> None:
    spec = _spec()
    settings = convert.run_settings(ablation.run_request(spec, spec.arms[0], 0))
    assert not settings.task.in_process


def test_a_prior_is_the_earlier_ablations_finished_level2_runs() -> None:
    earlier = _spec()
    earlier.cells = {"A/0": Cell("run-a0", "succeeded"), "D/0": Cell("run-d0", "succeeded"),
                     "D/1": Cell("run-d1", "failed"), "C-noop/0": Cell("run-n0", "succeeded"),
                     "B/0": Cell("run-b0", "succeeded")}
    assert ablation.prior_runs(earlier) == ["run-n0", "run-d0"]
    earlier.cells = {"A/0": Cell("run-a0", "succeeded")}
    with pytest.raises(ValueError, match="no finished run with Level 2"):
        ablation.prior_runs(earlier)


def test_a_portfolio_lead_is_the_earlier_ablations_best_fixed_strategy_on_fresh_seeds() \
        -> None:
    earlier = _spec()
    arms, _ = ablation.catalogue(False, earlier.schedule_batch)
    earlier.arms = [arms[n] for n in ("A", "D", "tpe", "random_search")]
    base = {f"baseline/{r}": Cell("run-b", "succeeded", value=1.0) for r in range(3)}
    # tpe gains most on average (0.3, 0.1, 0.2); D, a portfolio, gains more but is no
    # single strategy; random_search wins one repeat.
    values = {"A": (0.95, 0.9, 0.95), "D": (0.1, 0.1, 0.1), "tpe": (0.7, 0.9, 0.8),
              "random_search": (0.6, 1.2, 1.1)}
    earlier.reeval = {**base, **{f"{a}/{r}": Cell("run-x", "succeeded", value=v)
                                 for a, vs in values.items() for r, v in enumerate(vs)}}
    assert ablation.portfolio_lead(earlier) == "tpe"
    spec = _spec(portfolio_lead="tpe")
    for arm in spec.arms:
        settings = convert.run_settings(ablation.run_request(spec, arm, 0))
        settings.validate()
        # Only an arm with Level 2's portfolio is led; memory stays off for every arm.
        assert settings.outer.portfolio_lead == ("tpe" if arm.name == "D" else "")
        assert not settings.proposer.use_memory
    # An ablation without two fixed strategies that gained names no lead.
    earlier.arms = [arms[n] for n in ("D", "tpe")]
    assert ablation.portfolio_lead(earlier) == ""


def test_a_portfolio_lead_must_be_an_offline_proposer_of_a_portfolio() -> None:
    for outer in (OuterSettings(levels=("1", "2"), portfolio_lead="gradient_descent"),
                  OuterSettings(levels=("1",), portfolio_lead="tpe"),
                  OuterSettings(levels=("1", "2"), portfolio=(), portfolio_lead="tpe")):
        with pytest.raises(FieldError) as info:
            outer.validate("local")
        assert info.value.field == "outer.portfolio_lead"
    OuterSettings(levels=("1", "2"), portfolio_lead="cmaes").validate("local")


def test_bad_prior_run_ids_are_refused_naming_the_field() -> None:
    with pytest.raises(FieldError) as info:
        OuterSettings(levels=("1", "2"), library_prior_runs=("../etc",)).validate("local")
    assert info.value.field == "outer.library_prior_runs"


def test_a_task_directory_is_sent_whole_and_a_best_replaces_its_editable_file() -> None:
    folder = Path(__file__).resolve().parents[1] / "examples" / "waves-regression"
    spec = _spec()
    spec.task = str(folder)
    request = ablation.run_request(spec, spec.arms[0], 0)
    assert request.task.preset == "" and not request.task.in_process
    assert request.task.task_files["train.py"] == (folder / "train.py").read_bytes()
    assert "bilevel-task.toml" in request.task.task_files
    fresh = ablation.reeval_request(spec, "RIDGE = 0.5\n", 0).task
    assert fresh.task_files["train.py"] == b"RIDGE = 0.5\n" and not fresh.train_py
    assert fresh.task_files["score.py"] == (folder / "score.py").read_bytes()


def test_progress_says_arm_repeat_outcome_and_eta() -> None:
    from controller.analysis.runner import progress_line
    from controller.api.gen.bilevel.v1 import runs_pb2 as rpb

    run = rpb.Run(state=rpb.RUN_STATE_SUCCEEDED, baseline_loss=0.98, best_loss=0.97)
    line = progress_line("search", 3, 10, "C-noop/2", run, 30.0, 3)
    assert line.startswith("[search 3/10] arm C-noop repeat 2: succeeded")
    assert "best - baseline in search -1.00e-02" in line and "ETA 1m10s" in line
    last = progress_line("re-evaluation", 4, 4, "baseline/0", rpb.Run(
        state=rpb.RUN_STATE_SUCCEEDED, baseline_loss=0.98), 2.0, 4)
    assert "mean on fresh seeds 0.980000" in last and last.endswith("ETA 0s)")
