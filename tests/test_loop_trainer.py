"""One real Level-1 run on the real trainer (cpu-tiny): train + trusted evaluation in
the sandbox, through the gRPC service. Slow: about a minute or two on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from tests.test_api_harness import Stubs, serving, wait_for_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_cpu_tiny_run_trains_evaluates_and_reports(tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image, slots=1) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(rpb.CreateRunRequest(
            task=rpb.TaskSpec(preset="cpu-tiny"), search=rpb.SearchSettings(seed=3),
            budgets=rpb.Budgets(max_trials=1)), timeout=60)
        events = list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=900))
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
    finished = [e.trial_finished for e in events if e.HasField("trial_finished")]
    assert final.state == rpb.RUN_STATE_SUCCEEDED, final
    baseline = finished[0]
    assert baseline.status == rpb.TRIAL_STATUS_KEEP, baseline
    assert 0.5 < baseline.val_bpb < 10  # a byte-level model after seconds of training
    assert "val_bpb" in json.loads(baseline.metrics_json)
    assert len(finished) == 2 and final.summary
