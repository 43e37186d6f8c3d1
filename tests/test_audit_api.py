"""The audit trail of a real controller over a real socket: what each call's records
carry (the principal the edge resolved included), that a call which cannot be recorded
is refused before it acts, that no secret reaches the log, and that concurrent calls keep
the chain whole."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.audit.chain import AUDIT_DIR, LOG_FILE
from controller.audit.verify import verify
from controller.cli import main
from controller.principals import LOCAL, Role
from controller.store.memory import Lesson, MemoryStore
from tests.audit_variants import tolerant_server
from tests.principals_harness import NO_DOCKER, Caller, code_of, make_principals
from tests.test_api_harness import ServerThread, serving, surrogate_run

Call = tuple[dict[str, Any], dict[str, Any] | None]


def _records(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / AUDIT_DIR / LOG_FILE).read_bytes().splitlines()]


def _calls(state: Path) -> list[Call]:
    """(request record, response record or None), in the order the calls began."""
    records = _records(state)
    responses = {r["call"]: r for r in records if r["phase"] == "response"}
    return [(r, responses.get(r["seq"])) for r in records if r["phase"] == "request"]


def _only(calls: list[Call], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    found = [(req, resp) for req, resp in calls if req["method"].endswith(f"/{method}")]
    assert len(found) == 1, f"{method}: {len(found)} calls recorded"
    request, response = found[0]
    assert response is not None, f"{method}: no response record"
    return request, response


def _lessons(server: ServerThread) -> MemoryStore:
    assert server.server is not None
    return MemoryStore(server.server.store)


def _add_lesson(server: ServerThread) -> None:
    _lessons(server).add([Lesson(task="surrogate", run_id="run-1", kind="helped",
                                 text="deeper helped")], LOCAL.name)


@pytest.mark.docker
def test_audit_records_who_created_read_cancelled_and_deleted_a_run(
        tmp_path: Path, sandbox_image: str, capsys: pytest.CaptureFixture[str]) -> None:
    """alice creates, reads and watches her run; root, an admin, cancels and deletes it.
    The edge runs before the audit, so each record names the caller it authenticated."""
    tokens = make_principals(tmp_path, {"root": Role.ADMIN, "alice": Role.USER})
    create = surrogate_run(trials=1000)
    with serving(tmp_path, sandbox_image, listen="127.0.0.1:0") as server:
        alice, root = (Caller(server.address, tokens[name]) for name in ("alice", "root"))
        run = alice.runs.CreateRun(create, timeout=30)
        got = alice.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        cancelled = root.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id), timeout=60)
        events = list(alice.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=60))
        deleted = root.runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.id), timeout=60)
        alice.close()
        root.close()
    assert cancelled.stop_reason == "cancelled by root"
    calls = _calls(tmp_path)
    request, response = _only(calls, "CreateRun")
    assert request["principal"] == response["principal"] == "alice"
    assert request["bytes_in"] == response["bytes_in"] == create.ByteSize() > 0
    assert response["run"] == run.id and response["bytes_out"] == run.ByteSize()
    for method, who, sent in (("GetRun", "alice", got), ("CancelRun", "root", cancelled),
                              ("DeleteRun", "root", deleted)):
        request, response = _only(calls, method)
        assert request["principal"] == response["principal"] == who, method
        assert request["run"] == response["run"] == run.id, method
        assert response["status"] == "OK" and response["bytes_out"] == sent.ByteSize(), method
        assert request["bytes_in"] == len(run.id) + 2  # the run_id field alone
    request, response = _only(calls, "WatchRun")  # a stream: every event's bytes
    assert response["principal"] == "alice"
    assert response["bytes_out"] == sum(e.ByteSize() for e in events) > 0
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") for r, _ in calls)
    assert verify(tmp_path / AUDIT_DIR).problem is None
    assert main(["audit", "--state-dir", str(tmp_path), "--run", run.id]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(row[1], row[2]) for row in rows if len(row) == 8] == [
        ("alice", "CreateRun"), ("alice", "GetRun"), ("root", "CancelRun"),
        ("alice", "WatchRun"), ("root", "DeleteRun")]


def test_audit_records_reads_and_refusals_with_their_status(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
        owner = Caller(server.address, None)  # the private socket: LOCAL
        missing = rpb.GetRunRequest(run_id="run-000000000000")
        assert code_of(lambda: owner.runs.GetRun(missing))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: owner.runs.ListRuns(rpb.ListRunsRequest(page_token="x!"))
                       )[0] == grpc.StatusCode.INVALID_ARGUMENT
        _add_lesson(server)
        listed = owner.memory.ListLessons(rpb.ListLessonsRequest(task="surrogate"))
        owner.memory.ClearLessons(rpb.ClearLessonsRequest(task="surrogate"))
        health = owner.closer.unary_unary("/grpc.health.v1.Health/Check")
        health(health_pb2.HealthCheckRequest().SerializeToString())  # not audited
        owner.close()
    calls = _calls(tmp_path)
    assert len(calls) == 4  # no health call
    request, response = _only(calls, "GetRun")
    assert response["status"] == "NOT_FOUND" and response["run"] == "run-000000000000"
    assert _only(calls, "ListRuns")[1]["status"] == "INVALID_ARGUMENT"
    request, response = _only(calls, "ListLessons")
    assert request["object"] == "surrogate" and response["bytes_out"] == listed.ByteSize()
    assert _only(calls, "ClearLessons")[1]["status"] == "OK"
    assert {r["principal"] for r, _ in calls} == {LOCAL.name}
    assert all(r["peer"].startswith("unix:") for r, _ in calls)
    assert verify(tmp_path / AUDIT_DIR).problem is None


def _unwritable(state: Path) -> None:
    """The log replaced under the running controller (by a directory: root ignores file
    modes, so a read-only file would not do)."""
    log = state / AUDIT_DIR / LOG_FILE
    log.unlink()
    log.mkdir()


def test_deny_call_refused_when_its_record_cannot_be_written(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
        owner = Caller(server.address, None)
        _add_lesson(server)
        owner.memory.ListLessons(rpb.ListLessonsRequest())
        _unwritable(tmp_path)
        code, message = code_of(lambda: owner.memory.ClearLessons(
            rpb.ClearLessonsRequest(all=True)))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "could not be recorded, so it was not carried out" in message
        assert len(_lessons(server).list()) == 1  # nothing was cleared
        assert code_of(lambda: owner.runs.ListRuns(rpb.ListRunsRequest()))[0] == \
            grpc.StatusCode.UNAVAILABLE  # reads too: nothing is served unrecorded
        owner.close()


def test_twin_a_log_that_ignores_write_errors_serves_the_call_unrecorded(
        tmp_path: Path) -> None:
    with serving(tmp_path, None, factory=tolerant_server, docker_url=NO_DOCKER) as server:
        owner = Caller(server.address, None)
        _add_lesson(server)
        owner.memory.ListLessons(rpb.ListLessonsRequest())
        _unwritable(tmp_path)
        cleared = owner.memory.ClearLessons(rpb.ClearLessonsRequest(all=True))
        assert cleared.deleted == 1 and not _lessons(server).list()
        owner.close()
    assert not list((tmp_path / AUDIT_DIR / LOG_FILE).iterdir())  # and no record of it


def test_deny_no_token_appears_in_the_log(tmp_path: Path) -> None:
    """Neither the shared token a call carries nor the token CreateToken returns."""
    shared = "s3cret-shared-" + "7" * 20
    with serving(tmp_path, None, tokens=(shared,), docker_url=NO_DOCKER) as server:
        admin = Caller(server.address, shared)
        made = admin.principals.CreateToken(ppb.CreateTokenRequest(
            name="carol", role=ppb.ROLE_USER))
        carol = Caller(server.address, made.token)
        carol.runs.ListRuns(rpb.ListRunsRequest())
        nobody = Caller(server.address, None)  # TCP without a token: refused at the edge
        assert code_of(lambda: nobody.runs.ListRuns(rpb.ListRunsRequest()))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        for caller in (admin, carol, nobody):
            caller.close()
    raw = (tmp_path / AUDIT_DIR / LOG_FILE).read_bytes()
    calls = _calls(tmp_path)
    assert [(r["principal"], r["method"].rpartition("/")[2], r["object"]) for r, _ in calls] \
        == [("shared", "CreateToken", "carol"), ("carol", "ListRuns", "")]
    assert len(made.token) >= 32 and made.token.encode() not in raw
    assert shared.encode() not in raw and b"authorization" not in raw.lower()
    assert b"Bearer" not in raw


def test_concurrent_calls_keep_the_chain_valid(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
        owner = Caller(server.address, None)

        def one(n: int) -> None:
            if n % 2:
                owner.runs.ListRuns(rpb.ListRunsRequest(page_size=n))
            else:
                code_of(lambda: owner.runs.GetRun(rpb.GetRunRequest(run_id=f"run-{n:012d}")))

        with ThreadPoolExecutor(50) as pool:
            list(pool.map(one, range(50)))
        owner.close()
    verdict = verify(tmp_path / AUDIT_DIR)
    assert verdict.problem is None and verdict.records == 100
    calls = _calls(tmp_path)
    assert len(calls) == 50
    for request, response in calls:
        assert response is not None
        assert (response["method"], response["run"], response["peer"]) == \
            (request["method"], request["run"], request["peer"])
    assert sorted(r["run"] for r, _ in calls if r["run"]) == \
        [f"run-{n:012d}" for n in range(0, 50, 2)]


def test_the_chain_goes_on_when_the_controller_restarts(tmp_path: Path) -> None:
    for _ in range(2):
        with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
            owner = Caller(server.address, None)
            owner.runs.ListRuns(rpb.ListRunsRequest())
            owner.close()
    verdict = verify(tmp_path / AUDIT_DIR)
    assert verdict.problem is None and verdict.records == 4


def test_a_stream_the_client_cancels_is_recorded_as_cancelled(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER) as server:
        assert server.server is not None
        server.server.store.create_run("run-0000000000aa", {}, LOCAL.name)  # no events yet
        owner = Caller(server.address, None)
        stream = owner.runs.WatchRun(rpb.WatchRunRequest(run_id="run-0000000000aa"))
        deadline = time.monotonic() + 30
        while not _records(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)  # the request record is written before the handler runs
        stream.cancel()
        while len(_records(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        owner.close()
    request, response = _only(_calls(tmp_path), "WatchRun")
    assert request["run"] == "run-0000000000aa" and response["status"] == "CANCELLED"
    assert verify(tmp_path / AUDIT_DIR).problem is None
