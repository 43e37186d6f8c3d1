"""Level 2's portfolio in a real run: a controller on a socket, the surrogate task in
sandboxes on the real engine. Every trial after the baseline records the arm that
proposed it and that arm's probability, over the API and in the store; the summary
reports the allocation; `--portfolio none` runs Level 2 without one; and a second run
starts with the strategy that won the task's earlier runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.research.level2 import portfolio
from controller.research.settings import PORTFOLIO_ARMS
from tests.test_api_harness import Stubs, serving, surrogate_run, wait_for_engine

pytestmark = pytest.mark.docker


def _level2(trials: int, **outer: Any) -> rpb.CreateRunRequest:
    request = surrogate_run(trials=trials, seed=3)
    request.outer.CopyFrom(rpb.OuterSettings(levels=[rpb.LEVEL_1, rpb.LEVEL_2],
                                             mechanism_source="library", **outer))
    return request


def _finished(stubs: Stubs, run_id: str) -> list[rpb.RunEvent.TrialFinished]:
    events = stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id), timeout=300)
    return [e.trial_finished for e in events if e.HasField("trial_finished")]


def test_each_trial_records_its_arm_and_probability_and_the_summary_reports_them(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(_level2(12), timeout=30)
        finished = _finished(stubs, run.id)
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        assert final.state == rpb.RUN_STATE_SUCCEEDED, final.stop_reason
        assert finished[0].arm == "" and not finished[0].HasField("arm_probability")
        drawn = [f for f in finished[1:] if f.proposal_source == "proposer"]
        assert drawn, "every trial was a mechanism's"
        for f in drawn:
            assert f.arm in PORTFOLIO_ARMS, f
            assert 0 < f.arm_probability <= 1
            assert f.description.endswith(f"[{f.arm}]") or f.arm == "local"
        assert "portfolio: " in final.summary
        # The default arms, each with its trials and inverse-propensity mean rank.
        assert all(f"{name} " in final.summary for name in PORTFOLIO_ARMS)
        assert "cmaes" not in final.summary and "IPW mean rank" in final.summary

        off = stubs.runs.CreateRun(_level2(3, no_portfolio=True), timeout=30)
        assert all(f.arm == "" for f in _finished(stubs, off.id))
        assert "portfolio" not in stubs.runs.GetRun(rpb.GetRunRequest(run_id=off.id)).summary


def test_a_portfolio_arm_or_lead_that_is_not_an_offline_proposer_is_refused_naming_the_field(
        tmp_path: Path) -> None:
    import grpc

    from tests.test_api_harness import field_violations

    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock") as server:
        stubs = Stubs(server.address)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(_level2(3, portfolio_arms=["tpe", "gradient_descent"]),
                                 timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outer.portfolio_arms" in field_violations(info.value)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(_level2(3, portfolio_lead="gradient_descent"), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outer.portfolio_lead" in field_violations(info.value)


def test_a_second_run_starts_with_the_strategy_that_won_the_first(
        tmp_path: Path, sandbox_image: str) -> None:
    """Runs of one strategy each leave what they gained in memory; the next Level 2 run
    of the task gives the winner LEAD_SHARE of every draw and says so; a run with
    no_memory (an ablation's arm) is not led."""
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        gains = {}
        for name, kind in (("local", rpb.PROPOSER_KIND_LOCAL),
                           ("random_search", rpb.PROPOSER_KIND_RANDOM_SEARCH)):
            request = surrogate_run(trials=6, seed=3)
            request.search.final_seeds = 0  # the gain recorded is the in-run one
            request.proposer.CopyFrom(rpb.ProposerSettings(kind=kind))
            run = stubs.runs.CreateRun(request, timeout=30)
            _finished(stubs, run.id)
            done = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
            assert done.state == rpb.RUN_STATE_SUCCEEDED, done.stop_reason
            gains[name] = done.baseline_val_bpb - done.best_val_bpb
        winner = max(gains, key=gains.__getitem__)
        assert gains[winner] > 0, gains  # seed 3: local improves the surrogate in 6 trials

        led = stubs.runs.CreateRun(_level2(8), timeout=30)
        drawn = [f for f in _finished(stubs, led.id) if f.arm]
        summary = stubs.runs.GetRun(rpb.GetRunRequest(run_id=led.id)).summary
        assert f"led by {winner}: the winner of earlier runs" in summary, summary
        for f in drawn:
            if f.arm == winner:
                assert f.arm_probability >= portfolio.LEAD_SHARE, f
            else:
                assert f.arm_probability <= 1 - portfolio.LEAD_SHARE, f

        free = _level2(2)
        free.proposer.no_memory = True
        run = stubs.runs.CreateRun(free, timeout=30)
        _finished(stubs, run.id)
        assert "led by" not in stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id)).summary

        # A lead the request names (an ablation's, from its earlier fixed arms) leads
        # without memory, and joins the arms when it is not among them.
        named = _level2(4, portfolio_lead="cmaes")
        named.proposer.no_memory = True
        run = stubs.runs.CreateRun(named, timeout=30)
        drawn = [f for f in _finished(stubs, run.id) if f.arm]
        summary = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id)).summary
        assert "led by cmaes: named by the request" in summary and "cmaes " in summary, summary
        assert all((f.arm_probability >= portfolio.LEAD_SHARE) == (f.arm == "cmaes")
                   for f in drawn), drawn
