"""`bilevel report RUN --server ADDR` against a real controller over gRPC on loopback,
with a bearer token: the same page as the local report of the same store, a refusal
without the token, and a report of a run that is still running (its event stream never
ends) that returns with the trials finished so far instead of waiting for the end.

The controller runs without a Docker engine: nothing here runs a trial, and without an
engine it does not resume the running run, so that run stays running while reported.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_api_harness import serving
from tests.test_cli_commands import bilevel
from tests.test_report_run import TRIALS, Page, hostile_run

TOKEN = "report-test-token-0123456789abcdef"


def _still_running(state: Path) -> str:
    """A run whose three trials finished but which never ended (a killed controller)."""
    from controller.research.settings import Budgets, RunSettings, TaskSettings
    from controller.store.records import TrialFinish, TrialStatus
    from controller.store.runs import RunStore

    store = RunStore(state / "bilevel.sqlite3")
    settings = RunSettings(task=TaskSettings(preset="surrogate"), budgets=Budgets(max_trials=9))
    store.create_run("run-running00001", settings.to_dict())
    for i, value in enumerate((1.0, 0.9, 1.1)):
        store.begin_trial("run-running00001", i, f"trial {i}", {})
        store.finish_trial("run-running00001", TrialFinish(
            index=i, status=TrialStatus.KEEP if value < 1.05 else TrialStatus.DISCARD,
            val_bpb=value, memory_gb=0.1, metrics={}, job_status="ok", exception=None,
            seconds=1.0, new_best=value < 1.05, proposal_source="proposer"), 1.0)
    store.begin_trial("run-running00001", 3, "in flight", {})
    store.close()
    return "run-running00001"


def test_report_over_grpc_matches_the_local_report_and_needs_the_token(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_id = hostile_run(state)
    running = _still_running(state)
    trials = [(None if v is None else v - 2.0, s, j, src, d) for v, s, j, src, d in TRIALS]
    maximised = hostile_run(state, "run-maximised0001", trials,
                            {"metric": "r2", "direction": "maximize"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    local = bilevel("report", run_id, "--state-dir", str(state), "--out",
                    str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    with serving(state, None, docker_url="unix:///nonexistent/docker.sock",
                 tokens=(TOKEN,), listen="127.0.0.1:0") as server:
        remote = ("--server", server.address, "--token-file", str(token_file))
        done = bilevel("report", run_id, *remote, "--out", str(tmp_path / "remote"))
        assert done.returncode == 0, done.stderr
        refused = bilevel("report", run_id, "--server", server.address,
                          env={"BILEVEL_TOKEN": ""})
        assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
        ablation = bilevel("report", "abl-20261202-abcdef", *remote)
        assert ablation.returncode == 2 and "only a run" in ablation.stderr
        live = bilevel("report", running, *remote, "--out", str(tmp_path / "live"))
        assert live.returncode == 0, live.stderr
        r2 = bilevel("report", maximised, *remote, "--out", str(tmp_path / "r2"))
        assert r2.returncode == 0, r2.stderr
    r2_local = bilevel("report", maximised, "--state-dir", str(state), "--out",
                       str(tmp_path / "r2-local"))
    assert r2_local.returncode == 0, r2_local.stderr

    mine = Page((tmp_path / "local" / "report.html").read_text())
    theirs = Page((tmp_path / "remote" / "report.html").read_text())
    assert len(theirs.body("trials")) == len(TRIALS)
    assert theirs.body("trials") == mine.body("trials")
    assert theirs.tables["facts"] == mine.tables["facts"]
    assert theirs.body("mechanisms") == mine.body("mechanisms")
    assert theirs.ids["diff"] == mine.ids["diff"] and theirs.ids["counts"] == mine.ids["counts"]
    assert theirs.ids["trial-diff-1-body"] == mine.ids["trial-diff-1-body"]

    r2_remote = Page((tmp_path / "r2" / "report.html").read_text())
    assert r2_remote.tables["trials"] == Page(
        (tmp_path / "r2-local" / "report.html").read_text()).tables["trials"]
    assert r2_remote.tables["trials"][0][4] == "r2"  # the metric came over the API

    page = Page((tmp_path / "live" / "report.html").read_text())
    assert [r[0] for r in page.body("trials")] == ["0", "1", "2"]
    assert dict((r[0], r[1]) for r in page.tables["facts"] if len(r) == 2)["state"] == \
        "running"
