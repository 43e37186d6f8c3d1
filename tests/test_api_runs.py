"""RunService over a real socket: runs of the surrogate task in real containers."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from tests.test_api_harness import (
    Stubs,
    field_violations,
    serving,
    surrogate_run,
    wait_for_engine,
)

pytestmark = pytest.mark.docker


def _events(stubs: Stubs, run_id: str, after_seq: int = 0) -> list[rpb.RunEvent]:
    return list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id, after_seq=after_seq),
                                    timeout=120))


def test_run_lifecycle_create_watch_get_list_and_artifacts(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        run = stubs.runs.CreateRun(surrogate_run(trials=4), timeout=30)
        assert run.state == rpb.RUN_STATE_RUNNING and run.id.startswith("run-")
        events = _events(stubs, run.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert kinds.count("trial_finished") == 5  # the baseline and 4 trials
        finished = [e.trial_finished for e in events if e.HasField("trial_finished")]
        assert finished[0].description == "baseline"
        assert finished[0].status == rpb.TRIAL_STATUS_KEEP

        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        assert final.state == rpb.RUN_STATE_SUCCEEDED
        assert final.trials_done == 5 and final.stop_reason == "trial budget of 4 spent"
        assert final.best_loss <= final.baseline_loss
        # The deprecated names still carry the same values for one release.
        assert (final.baseline_val_bpb, final.best_val_bpb) == (final.baseline_loss,
                                                                final.best_loss)
        assert [f.val_bpb for f in finished] == [f.loss for f in finished]

        listed = stubs.runs.ListRuns(rpb.ListRunsRequest())
        assert [r.id for r in listed.runs] == [run.id]

        tsv = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id, name="results.tsv"))
        lines = tsv.content.decode().splitlines()
        assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
        assert len(lines) == 6 and lines[1].split("\t")[3] == "keep"
        best = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id,
                                                             name="best/train.py"))
        assert b"DEPTH =" in best.content and best.content_type == "text/x-python"
        diff = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id,
                                                             name="trials/1/diff"))
        assert diff.content.startswith(b"--- a/train.py")
        log = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id,
                                                            name="trials/0/log"))
        assert b"val_bpb:" in log.content


def test_watch_resumed_with_after_seq_delivers_every_event_exactly_once(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        run = stubs.runs.CreateRun(surrogate_run(trials=6), timeout=30)
        seen: list[int] = []
        # Disconnect after every 3 events, live, while the run is going.
        while True:
            call = stubs.runs.WatchRun(rpb.WatchRunRequest(
                run_id=run.id, after_seq=seen[-1] if seen else 0), timeout=120)
            done = False
            for got, event in enumerate(call, start=1):
                seen.append(event.seq)
                if event.HasField("run_finished"):
                    done = True
                    break
                if got == 3:
                    call.cancel()
                    break
            if done:
                break
        assert seen == list(range(1, len(seen) + 1))
        assert seen == [e.seq for e in _events(stubs, run.id)]
        # Watching a finished run after its last event ends at once with nothing.
        assert _events(stubs, run.id, after_seq=seen[-1]) == []


def test_paging_lists_every_run_once_newest_first(tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        ids = [stubs.runs.CreateRun(surrogate_run(trials=1)).id for _ in range(3)]
        for run_id in ids:
            _events(stubs, run_id)
        page1 = stubs.runs.ListRuns(rpb.ListRunsRequest(page_size=2))
        page2 = stubs.runs.ListRuns(rpb.ListRunsRequest(page_size=2,
                                                        page_token=page1.next_page_token))
        assert page1.next_page_token and not page2.next_page_token
        assert [r.id for r in [*page1.runs, *page2.runs]] == ids[::-1]


def test_cancel_stops_a_run_and_cancelling_again_is_a_failed_precondition(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        run = stubs.runs.CreateRun(surrogate_run(trials=1000), timeout=30)
        for event in stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=60):
            if event.HasField("trial_finished") and event.trial_finished.trial >= 1:
                break
        cancelled = stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id), timeout=60)
        assert cancelled.state == rpb.RUN_STATE_CANCELLED
        last = _events(stubs, run.id)[-1]
        assert last.run_finished.state == rpb.RUN_STATE_CANCELLED
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(info.value)
        assert status is not None
        assert status.details[0].Is(error_details_pb2.PreconditionFailure.DESCRIPTOR)


@pytest.mark.parametrize(("request_", "field"), [
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate")), "budgets.max_trials"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="nope"), budgets=rpb.Budgets(max_trials=1)),
     "task.preset"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(), budgets=rpb.Budgets(max_trials=1)),
     "task.preset"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate", train_py=b"def ("),
                          budgets=rpb.Budgets(max_trials=1)), "task.train_py"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                          search=rpb.SearchSettings(frozen_knobs=["NOT_A_KNOB"]),
                          budgets=rpb.Budgets(max_trials=1)), "search.frozen_knobs"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                          proposer=rpb.ProposerSettings(kind=cast(Any, 42)),  # no such kind
                          budgets=rpb.Budgets(max_trials=1)), "proposer.kind"),
    (rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                          budgets=rpb.Budgets(max_trials=1, max_wall_seconds=-1)),
     "budgets.max_wall_seconds"),
])
def test_invalid_create_run_names_the_field(
        tmp_path: Path, sandbox_image: str, request_: rpb.CreateRunRequest, field: str) -> None:
    with serving(tmp_path, sandbox_image) as server, pytest.raises(grpc.RpcError) as info:
        Stubs(server.address).runs.CreateRun(request_, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(info.value)


def test_unknown_run_and_artifact_are_not_found_and_bad_names_invalid(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        for call in (lambda: stubs.runs.GetRun(rpb.GetRunRequest(run_id="run-missing")),
                     lambda: list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id="run-x"))),
                     lambda: stubs.runs.CancelRun(rpb.CancelRunRequest(run_id="run-x"))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        run = stubs.runs.CreateRun(surrogate_run(trials=1))
        _events(stubs, run.id)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id, name="trials/7/log"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id, name="../../etc/pwd"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in field_violations(info.value)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.ListRuns(rpb.ListRunsRequest(page_token="garbage!"))
        assert "page_token" in field_violations(info.value)


def test_create_run_beyond_max_runs_is_resource_exhausted(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image, max_active_runs=1) as server:
        stubs = Stubs(server.address)
        first = stubs.runs.CreateRun(surrogate_run(trials=1000))
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(surrogate_run(trials=1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=first.id), timeout=60)


def test_create_run_is_unavailable_when_docker_is_down(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock") as server, \
            pytest.raises(grpc.RpcError) as info:
        Stubs(server.address).runs.CreateRun(surrogate_run(trials=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_two_watchers_see_the_same_events(tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(surrogate_run(trials=3))
        seqs: list[list[int]] = [[], []]

        def watch(i: int) -> None:
            seqs[i] = [e.seq for e in _events(stubs, run.id)]

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seqs[0] == seqs[1] and seqs[0][-1] > 10
