"""Whose key a run's LLM calls carry, and where it may go (issue 20, part 7).

Real SDK calls to the fake providers on loopback, which record the key each request
carries: a principal's own key file (`<llm.principal_key_dir>/<principal>/<provider>`,
read at each use) for its runs, the server's key for every other run, a key file that
others may read or that is not the controller's refused, and no key - the server's or a
principal's - sent to a base URL the operator did not allow. The same through a real
controller: two principals' runs, each key arriving where it belongs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.errors import FieldError
from controller.llm.errors import LLMConfigError
from controller.llm.factory import build_provider
from controller.llm.keys import principal_key_file, resolve_key
from controller.llm.settings import LLMAccess
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from controller.principals import Role
from tests.fake_llm_server import FakeLLMServer, Reply
from tests.other_uid import OTHER_UID
from tests.principals_harness import add_principal
from tests.test_api_harness import Stubs, field_violations, serving, surrogate_run
from tests.test_loop_harness import llm_settings, params_answer

SERVER_KEY = "sk-server-0123456789abcdef"
ALICE_KEY = "sk-alice-0123456789abcdef"
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
REQUEST = LLMRequest(system="You propose experiments.",
                     messages=(ChatMessage("user", "Propose one change."),), max_tokens=64,
                     tag=CallTag(run_id="run-x", trial=1, call=0))


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's key directory: alice has her own OpenAI key; the server's own
    keys are in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SERVER_KEY)
    (tmp_path / "keys" / "alice").mkdir(parents=True)
    key = tmp_path / "keys" / "alice" / "openai"
    key.write_text(ALICE_KEY + "\n")
    key.chmod(0o600)
    return tmp_path / "keys"


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=lambda _r: Reply(params_answer({"MATRIX_LR": 0.05}))) as fake:
        yield fake


def _provider(url: str, access: LLMAccess) -> Provider:
    return build_provider(llm_settings(url, "openai"), access, record=lambda _c: None,
                          budget_spent=lambda: "", replay_answers=lambda _r: {})


def _keys_sent(fake: FakeLLMServer) -> list[str]:
    return [r.headers.get("authorization", "") for r in fake.requests]


def test_allow_a_principals_runs_use_its_own_key_file_and_others_the_servers(
        keys: Path, llm: FakeLLMServer) -> None:
    access = LLMAccess(allowed_base_urls=(llm.openai_url,), principal_key_dir=keys)
    _provider(llm.openai_url, access.for_owner("alice")).complete(REQUEST)
    _provider(llm.openai_url, access.for_owner("bob")).complete(REQUEST)  # none mapped
    _provider(llm.openai_url, access).complete(REQUEST)  # no owner
    assert _keys_sent(llm) == [f"Bearer {ALICE_KEY}", f"Bearer {SERVER_KEY}",
                               f"Bearer {SERVER_KEY}"]
    # Read at each use: a replaced key is the next run's, a removed one falls back.
    (keys / "alice" / "openai").write_text("sk-alice-rotated-0123456789\n")
    assert resolve_key("openai", access.for_owner("alice"), "").reveal() == \
        "sk-alice-rotated-0123456789"
    (keys / "alice" / "openai").unlink()
    assert resolve_key("openai", access.for_owner("alice"), "").reveal() == SERVER_KEY
    # A name that is no principal's is never a path: "../alice" reads nothing.
    assert principal_key_file(access.for_owner("../alice"), "openai") is None
    assert principal_key_file(access.for_owner("alice"), "../../etc/passwd") is None


def test_deny_a_key_file_others_may_read_or_that_is_not_the_controllers(
        keys: Path, llm: FakeLLMServer, tmp_path: Path) -> None:
    access = LLMAccess(allowed_base_urls=(llm.openai_url,),
                       principal_key_dir=keys).for_owner("alice")
    key = keys / "alice" / "openai"
    key.chmod(0o640)
    with pytest.raises(LLMConfigError, match=r"refused: .*readable by it only \(chown "
                                             rf"{os.geteuid()} and chmod 600 it\)") as info:
        _provider(llm.openai_url, access)
    assert ALICE_KEY not in str(info.value)
    key.chmod(0o600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(ALICE_KEY)
    elsewhere.chmod(0o600)
    key.unlink()
    key.symlink_to(elsewhere)  # a link is refused, wherever it points
    with pytest.raises(LLMConfigError, match="the key of principal 'alice' for openai"):
        _provider(llm.openai_url, access)
    key.unlink()
    key.write_text(ALICE_KEY)
    key.chmod(0o600)
    if os.geteuid() == 0:  # a file of another user: not the operator's for this server
        os.chown(key, OTHER_UID, OTHER_UID)
        with pytest.raises(LLMConfigError, match=f"it is uid {OTHER_UID}"):
            _provider(llm.openai_url, access)
    assert llm.requests == []


def test_deny_any_key_going_to_a_base_url_the_operator_did_not_allow(
        keys: Path, llm: FakeLLMServer) -> None:
    with FakeLLMServer() as theirs:
        access = LLMAccess(allowed_base_urls=(llm.openai_url,), principal_key_dir=keys)
        for owner in ("alice", "bob", ""):  # her own key, and the server's
            with pytest.raises(FieldError, match="not allowed by this controller"):
                _provider(theirs.openai_url, access.for_owner(owner))
        assert theirs.requests == []
    # Sensitivity: allowed by the operator, the same request does reach that server.
    with FakeLLMServer(responder=lambda _r: Reply("{}")) as allowed:
        _provider(allowed.openai_url, access.allowing(allowed.openai_url)
                  .for_owner("alice")).complete(REQUEST)
        assert _keys_sent(allowed) == [f"Bearer {ALICE_KEY}"]


@pytest.mark.docker
def test_allow_each_principals_run_carries_its_key_through_the_controller(
        tmp_path: Path, sandbox_image: str, keys: Path, llm: FakeLLMServer) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name, token in TOKENS.items():
        add_principal(state, name, Role.USER, token)
    with FakeLLMServer(responder=lambda _r: Reply(params_answer({"MATRIX_LR": 0.05}))) as \
            bobs:
        fakes = {"alice": llm, "bob": bobs}  # each run its own server: whose key is whose
        access = LLMAccess(allowed_base_urls=(llm.openai_url, bobs.openai_url),
                           principal_key_dir=keys)
        with serving(state, sandbox_image, listen="127.0.0.1:0", llm=access) as server:
            for name, token in TOKENS.items():
                stubs = Stubs(server.address, token)
                request = surrogate_run(trials=1)
                request.proposer.kind = rpb.PROPOSER_KIND_LLM
                request.llm.provider, request.llm.model = "openai", "fake-model"
                request.llm.base_url = fakes[name].openai_url
                run = stubs.runs.CreateRun(request, metadata=stubs.metadata, timeout=60)
                deadline = time.monotonic() + 180
                while not fakes[name].requests and time.monotonic() < deadline:
                    time.sleep(0.2)
                stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id),
                                     metadata=stubs.metadata, timeout=60)
                # A URL the operator did not list: refused before a key is read.
                request.llm.base_url = "http://127.0.0.1:9/v1"
                with pytest.raises(grpc.RpcError) as info:
                    stubs.runs.CreateRun(request, metadata=stubs.metadata, timeout=60)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not allowed" in field_violations(info.value)["llm.base_url"]
        assert set(_keys_sent(llm)) == {f"Bearer {ALICE_KEY}"}
        assert set(_keys_sent(bobs)) == {f"Bearer {SERVER_KEY}"}
