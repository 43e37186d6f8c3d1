"""RunService across principals, over a real server's socket: an admin (root), two users
(alice, bob) and a viewer (vera), each with a finished, a running and a paused run.

Another principal's run is NOT_FOUND for every RPC, with the very message and details
an unknown run gets: nothing names its owner, nothing says "permission", nothing of it
comes back. Each protection's sensitivity twin (`test_sensitivity_*`) takes the check
away inside the test and shows the leak it stops.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.principals import Principal
from controller.research import access
from controller.store.runs import RunStore
from tests.principals_harness import (
    EVENTS,
    RUNS,
    SECRET,
    Caller,
    cluster,
    code_of,
    prepare,
    resource_of,
)
from tests.test_api_harness import ServerThread, surrogate_run

UNKNOWN = "run-nnnndone00"  # the shape of a seeded id, of no run
Read = Callable[[Caller, str], Any]


def _artifact(name: str) -> Read:
    return lambda c, run: c.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run, name=name),
                                             timeout=30)


READS: dict[str, Read] = {
    "GetRun": lambda c, run: c.runs.GetRun(rpb.GetRunRequest(run_id=run), timeout=30),
    "WatchRun": lambda c, run: list(c.runs.WatchRun(rpb.WatchRunRequest(run_id=run),
                                                    timeout=30)),
    **{f"GetArtifact {name}": _artifact(name)
       for name in ("best/train.py", "results.tsv", "trials/0/log", "trials/0/train.py",
                    "task/secret/credentials.txt", "trials/9/log", "task/nothing")},
}
CHANGES: dict[str, tuple[str, Read]] = {  # which of the victim's runs, and the call
    "CancelRun": ("live", lambda c, run: c.runs.CancelRun(rpb.CancelRunRequest(run_id=run),
                                                          timeout=30)),
    "ResumeRun": ("paused", lambda c, run: c.runs.ResumeRun(
        rpb.ResumeRunRequest(run_id=run), timeout=30)),
    "DeleteRun": ("done", lambda c, run: c.runs.DeleteRun(rpb.DeleteRunRequest(run_id=run),
                                                          timeout=30)),
    "DeleteRun cancel": ("live", lambda c, run: c.runs.DeleteRun(
        rpb.DeleteRunRequest(run_id=run, cancel=True), timeout=30)),
}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    prepare(tmp_path)
    return tmp_path


@pytest.fixture
def served(state: Path) -> Iterator[tuple[ServerThread, dict[str, Caller]]]:
    with cluster(state) as both:
        yield both


def _unseen_like_unknown(caller: Caller, call: Read, run_id: str) -> None:
    """`run_id` (another's) gets exactly what an unknown run gets: NOT_FOUND, the same
    message but for the id, the same details, and no owner's name in any of it."""
    try:
        call(caller, run_id)
        raise AssertionError(f"{run_id} was served")
    except grpc.RpcError as exc:
        seen = exc
    try:
        call(caller, UNKNOWN)
        raise AssertionError("an unknown run was served")
    except grpc.RpcError as exc:
        unknown = exc
    assert seen.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    text = seen.details() or ""
    assert text.replace(run_id, "X") == (unknown.details() or "").replace(UNKNOWN, "X")
    assert "permission" not in text.lower()
    for owner in RUNS:
        assert owner not in text.replace(run_id, "X")
    info, unknown_info = resource_of(seen), resource_of(unknown)
    assert info is not None and unknown_info is not None
    assert (info.resource_type, info.description) == (unknown_info.resource_type,
                                                      unknown_info.description)


def test_deny_every_read_of_another_principals_run_is_not_found(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    for reader in ("bob", "alice", "vera"):
        for owner in RUNS:
            if owner == reader:
                continue
            for run_id in RUNS[owner].values():
                for name, call in READS.items():
                    try:
                        _unseen_like_unknown(c[reader], call, run_id)
                    except AssertionError as exc:
                        raise AssertionError(f"{reader} {name} {run_id}: {exc}") from exc


def test_allow_the_owner_and_an_admin_read_a_run(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    done = RUNS["alice"]["done"]
    for reader in ("alice", "root"):
        run = c[reader].runs.GetRun(rpb.GetRunRequest(run_id=done))
        assert run.owner == "alice" and run.summary == "alice's summary"
        assert len(READS["WatchRun"](c[reader], done)) == EVENTS
        secret = c[reader].runs.GetArtifact(rpb.GetArtifactRequest(
            run_id=done, name="task/secret/credentials.txt"))
        assert secret.content == SECRET + b"alice"
    # A viewer reads its own.
    assert c["vera"].runs.GetRun(rpb.GetRunRequest(run_id=RUNS["vera"]["done"])).owner == \
        "vera"


def test_sensitivity_without_the_owner_check_bob_reads_alices_run(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin of the read denial: `access.readable` without its owner check."""
    monkeypatch.setattr(access, "readable",
                        lambda store, run_id, by: store.get_run(run_id))
    _, c = served
    done = RUNS["alice"]["done"]
    assert c["bob"].runs.GetRun(rpb.GetRunRequest(run_id=done)).summary == "alice's summary"
    assert len(READS["WatchRun"](c["bob"], done)) == EVENTS
    secret = c["bob"].runs.GetArtifact(rpb.GetArtifactRequest(
        run_id=done, name="task/secret/credentials.txt"))
    assert secret.content == SECRET + b"alice"


def _state(state_dir: Path, run_id: str) -> str:
    store = RunStore(state_dir / "bilevel.sqlite3")
    try:
        return store.get_run(run_id).state.value
    finally:
        store.close()


def test_deny_cancel_resume_delete_of_another_principals_run(
        state: Path, served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    before = {run: _state(state, run) for ids in RUNS.values() for run in ids.values()}
    for actor in ("bob", "vera"):
        for victim in ("alice", "root"):
            for name, (which, call) in CHANGES.items():
                try:
                    _unseen_like_unknown(c[actor], call, RUNS[victim][which])
                except AssertionError as exc:
                    raise AssertionError(f"{actor} {name} {victim}: {exc}") from exc
    after = {run: _state(state, run) for ids in RUNS.values() for run in ids.values()}
    assert after == before, "a denied call changed a run"


def test_deny_a_viewer_changes_its_own_runs_permission_denied(
        state: Path, served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    for name, (which, call) in CHANGES.items():
        code, text = code_of(partial(call, c["vera"], RUNS["vera"][which]))
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
        assert "viewer" in text
    assert [_state(state, RUNS["vera"][w]) for w in ("done", "live", "paused")] == [
        "succeeded", "running", "paused"]


def test_allow_the_owner_cancels_and_the_reason_names_who(
        state: Path, served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    cancelled = c["alice"].runs.CancelRun(rpb.CancelRunRequest(run_id=RUNS["alice"]["live"]))
    assert cancelled.state == rpb.RUN_STATE_CANCELLED
    assert cancelled.stop_reason == "cancelled by alice"
    events = READS["WatchRun"](c["alice"], RUNS["alice"]["live"])
    assert events[-1].run_finished.reason == "cancelled by alice"
    # An admin changes anyone's run, and is named.
    by_root = c["root"].runs.CancelRun(rpb.CancelRunRequest(run_id=RUNS["bob"]["live"]))
    assert by_root.stop_reason == "cancelled by root"
    deleted = c["root"].runs.DeleteRun(rpb.DeleteRunRequest(run_id=RUNS["bob"]["done"]))
    assert deleted.run_id == RUNS["bob"]["done"]


def test_sensitivity_without_the_owner_check_bob_cancels_alices_run(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin of the change denial: `access.changeable` without its checks."""
    monkeypatch.setattr(access, "changeable",
                        lambda store, run_id, by, action: store.get_run(run_id))
    _, c = served
    run = c["bob"].runs.CancelRun(rpb.CancelRunRequest(run_id=RUNS["alice"]["live"]))
    assert run.state == rpb.RUN_STATE_CANCELLED and run.stop_reason == "cancelled by bob"


def _all_pages(caller: Caller, size: int, token: str = "") -> tuple[list[str], list[str]]:
    """Every run id ListRuns gives, page by page, and the tokens it handed out."""
    ids: list[str] = []
    tokens: list[str] = []
    while True:
        page = caller.runs.ListRuns(rpb.ListRunsRequest(page_size=size, page_token=token))
        ids += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            return ids, tokens
        tokens.append(token)


def test_deny_list_runs_shows_only_the_callers_runs(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    for name in ("alice", "bob", "vera"):
        ids, tokens = _all_pages(c[name], 1)
        assert sorted(ids) == sorted(RUNS[name].values())
        # A page token names only a run the caller was shown: no row number, no count.
        for token in tokens:
            decoded = base64.urlsafe_b64decode(token).decode()
            assert decoded.rsplit(":", 1)[1] in RUNS[name].values()
    everyone = sorted(r for ids in RUNS.values() for r in ids.values())
    assert sorted(_all_pages(c["root"], 2)[0]) == everyone
    # Alice's token replayed by bob pages through bob's runs only.
    _, alice_tokens = _all_pages(c["alice"], 1)
    replayed, _ = _all_pages(c["bob"], 50, alice_tokens[0])
    assert set(replayed) <= set(RUNS["bob"].values())
    code, _ = code_of(lambda: c["bob"].runs.ListRuns(rpb.ListRunsRequest(
        page_token=base64.urlsafe_b64encode(b"rowid:3").decode())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_sensitivity_without_the_owner_filter_bob_lists_alices_runs(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin of the list filter: every principal treated as seeing everyone."""
    monkeypatch.setattr(Principal, "sees_everyone", property(lambda self: True))
    _, c = served
    assert set(RUNS["alice"].values()) <= set(_all_pages(c["bob"], 50)[0])


def test_deny_a_viewer_creates_no_run(served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    code, text = code_of(lambda: c["vera"].runs.CreateRun(surrogate_run(1), timeout=30))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "viewer" in text


def test_sensitivity_a_viewer_treated_as_writing_reaches_the_engine(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: without the role check the viewer's CreateRun goes on to the (absent)
    Docker engine."""
    monkeypatch.setattr(Principal, "writes", property(lambda self: True))
    _, c = served
    code, _ = code_of(lambda: c["vera"].runs.CreateRun(surrogate_run(1), timeout=60))
    assert code == grpc.StatusCode.UNAVAILABLE


def _replay(run_id: str) -> rpb.CreateRunRequest:
    return rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset="surrogate"),
        proposer=rpb.ProposerSettings(kind=rpb.PROPOSER_KIND_LLM),
        llm=rpb.LlmSettings(provider="replay", replay_run=run_id))


def test_deny_replaying_another_principals_run(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    _unseen_like_unknown(c["alice"], lambda caller, run: caller.runs.CreateRun(
        _replay(run), timeout=30), RUNS["bob"]["done"])


def test_sensitivity_without_the_check_a_replay_reads_another_principals_run(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: unchecked, the replay reads bob's stored settings (and says so)."""
    monkeypatch.setattr(access, "readable",
                        lambda store, run_id, by: store.get_run(run_id))
    _, c = served
    code, text = code_of(lambda: c["alice"].runs.CreateRun(_replay(RUNS["bob"]["done"]),
                                                           timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "did not use an LLM" in text
