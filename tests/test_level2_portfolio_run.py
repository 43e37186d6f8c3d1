"""Level 2's portfolio in a real run: a controller on a socket, the surrogate task in
sandboxes on the real engine. Every trial after the baseline records the arm that
proposed it and that arm's probability, over the API and in the store; the summary
reports the allocation; and `--portfolio none` runs Level 2 without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
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


def test_a_portfolio_arm_that_is_not_an_offline_proposer_is_refused_naming_the_field(
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
