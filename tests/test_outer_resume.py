"""A real `bilevel serve` running Levels 1, 1.5 and 2 offline is SIGKILLed mid-run; the
restarted controller resumes the run with its mechanisms and their state intact."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.store.mechanisms import MechanismLog
from controller.store.runs import RunStore
from tests.test_api_harness import Stubs, wait_for_engine
from tests.test_cli_serve_resume import bilevel_serve

pytestmark = pytest.mark.docker


def test_sigkill_then_restart_resumes_mechanisms_with_their_state(
        tmp_path: Path, sandbox_image: str) -> None:
    namespace = f"pytest-outer-resume-{os.getpid()}"
    trials = 14
    request = rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset="surrogate"), budgets=rpb.Budgets(max_trials=trials),
        outer=rpb.OuterSettings(levels=[rpb.LEVEL_1, rpb.LEVEL_1_5, rpb.LEVEL_2],
                                mechanism_source="library", l15_every_trials=3,
                                l2_every_trials=5,
                                mechanisms=[rpb.InitialMechanism(name="tabu")]))
    with bilevel_serve(tmp_path, sandbox_image, namespace) as (proc, address):
        stubs = Stubs(address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(request, timeout=60)
        for event in stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=120):
            if event.HasField("trial_started") and event.trial_started.trial >= 7:
                break
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with bilevel_serve(tmp_path, sandbox_image, namespace) as (_, address):
        stubs = Stubs(address)
        wait_for_engine(stubs)
        events = list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=180))
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        report = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id,
                                                               name="mechanisms.md"))
        source = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id,
                                                               name="mechanisms/tabu.py"))
    assert final.state == rpb.RUN_STATE_SUCCEEDED and final.trials_done == trials + 1
    resumed = [e.mechanism for e in events if e.HasField("mechanism")
               and e.mechanism.action == "resumed"]
    assert "tabu" in {m.mechanism for m in resumed}
    assert all("restored" in m.detail for m in resumed if m.mechanism == "tabu")
    # Tabu's saved list spans the kill: it holds trials observed by the first controller.
    store = RunStore(tmp_path / "bilevel.sqlite3")
    tabu = [e["index"] for e in MechanismLog(store).saved_state(run.id, "tabu")["tabu"]]
    assert tabu == list(range(trials - 11, trials + 1)), tabu
    restarted = [e.seq for e in events if e.HasField("run_started") and e.run_started.resumed]
    assert restarted
    # Every trial carries tabu's records, before and after the restart, each once.
    observed = [c.trial for c in store.mechanism_records(run.id)
                if c.mechanism == "tabu" and c.hook == "observe"]
    assert sorted(set(observed)) == list(range(0, trials + 1))
    assert {m.name for m in final.mechanisms} >= {"tabu"}
    assert b"| tabu | initial |" in report.content
    assert b"class TabuSearch" in source.content
    assert any(e.HasField("config_adjusted") for e in events)
