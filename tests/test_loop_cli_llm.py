"""`bilevel run --provider ...` end to end: a real CLI subprocess, an in-process
controller, real sandbox containers, and the scripted fake LLM server answering the
proposals through each provider's SDK. Also: the API key never reaches a sandbox, an
outage pauses the run and `bilevel resume` finishes it, `bilevel memory` lists and
clears lessons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_llm_server import Fail, FakeLLMServer
from tests.test_cli_commands import bilevel
from tests.test_loop_harness import TEST_KEY, random_params_responder

pytestmark = pytest.mark.docker
KEYS = {"ANTHROPIC_API_KEY": TEST_KEY, "OPENAI_API_KEY": TEST_KEY}


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=random_params_responder()) as fake:
        yield fake


def _local(tmp_path: Path, image: str, namespace: str) -> tuple[str, ...]:
    return ("--state-dir", str(tmp_path), "--image", image, "--namespace", namespace)


def test_run_with_anthropic_then_list_and_clear_the_memory_it_left(
        tmp_path: Path, sandbox_image: str, server: FakeLLMServer) -> None:
    local = _local(tmp_path, sandbox_image, "pytest-llm-anthropic")
    done = bilevel("run", "--provider", "anthropic", "--base-url", server.anthropic_url,
                   "--preset", "surrogate", "--trials", "3", *local, env=KEYS)
    assert done.returncode == 0, done.stderr
    assert "succeeded - trial budget of 3 spent" in done.stdout
    assert len(server.requests) >= 3 and server.requests[0].api == "anthropic"
    assert "MATRIX_LR = 0.04" in server.requests[0].text
    assert done.stderr.count("try MATRIX_LR") >= 3  # the hypotheses in the trial lines
    run_id = done.stdout.split(":")[0]
    transcript = bilevel("artifact", run_id, "trials/1/llm.json", *local)
    assert transcript.returncode == 0 and '"proposal_id"' in transcript.stdout

    listed = bilevel("memory", "list", "--task", "surrogate", *local)
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
    cleared = bilevel("memory", "clear", "--task", "surrogate", *local)
    assert cleared.returncode == 0 and "deleted" in cleared.stdout
    refused = bilevel("memory", "clear", *local)
    assert refused.returncode == 2
    empty = bilevel("memory", "list", *local)
    assert empty.returncode == 0 and run_id not in empty.stdout


ENV_DUMP = "\nimport os\nprint('ENVIRONMENT', sorted(os.environ.items()))\n"


def test_code_mode_is_refused_on_the_surrogate_and_keys_stay_out_of_sandboxes(
        tmp_path: Path, sandbox_image: str, server: FakeLLMServer) -> None:
    """The surrogate's metric is computed from the knobs, so code edits are refused there
    (issue 11, finding 3); a baseline that prints its environment still runs in a
    sandbox, and the OpenAI-compatible endpoint's key is not in it."""
    from controller.research.tasks.surrogate import SOURCE

    local = _local(tmp_path, sandbox_image, "pytest-llm-openai")
    openai = ("--provider", "openai", "--base-url", server.openai_url, "--model",
              "deepseek-chat", "--preset", "surrogate", "--trials", "2")
    refused = bilevel("run", *openai, "--mode", "code", *local, env=KEYS)
    assert refused.returncode != 0 and "--mode" in refused.stderr, refused.stderr
    assert server.requests == []
    baseline = tmp_path / "train.py"
    baseline.write_text(SOURCE.read_text() + ENV_DUMP)
    done = bilevel("run", *openai, "--train-py", str(baseline), *local, env=KEYS)
    assert done.returncode == 0, done.stderr
    assert {r.api for r in server.requests} == {"openai"}
    assert server.requests[0].body["model"] == "deepseek-chat"
    run_id = done.stdout.split(":")[0]
    log = bilevel("artifact", run_id, "trials/1/log", *local)
    assert "ENVIRONMENT" in log.stdout, log.stdout
    assert TEST_KEY not in log.stdout and "API_KEY" not in log.stdout


def test_an_llm_outage_pauses_the_run_and_bilevel_resume_finishes_it(
        tmp_path: Path, sandbox_image: str, server: FakeLLMServer) -> None:
    server.responder = lambda request: Fail(529, "overloaded")
    local = _local(tmp_path, sandbox_image, "pytest-llm-pause")
    paused = bilevel("run", "--provider", "anthropic", "--base-url", server.anthropic_url,
                     "--preset", "surrogate", "--trials", "2", "--llm-attempts", "2",
                     "--llm-backoff", "0.01", *local, env=KEYS)
    assert paused.returncode == 3, paused.stderr
    assert "paused" in paused.stdout and "bilevel resume" in paused.stdout
    run_id = paused.stdout.split(":")[0]
    assert len(server.requests) == 2

    server.responder = random_params_responder()
    # Its key goes to the run's base URL only if this command's user allows it again:
    # `run --base-url` allowed it for that command's controller only.
    refused = bilevel("resume", run_id, *local, env=KEYS)
    assert refused.returncode == 2 and "--llm-base-url" in refused.stderr
    assert len(server.requests) == 2
    resumed = bilevel("resume", run_id, "--llm-base-url", server.anthropic_url, *local,
                      env=KEYS)
    assert resumed.returncode == 0, resumed.stderr
    assert "succeeded - trial budget of 2 spent" in resumed.stdout
    again = bilevel("resume", run_id, *local, env=KEYS)
    assert again.returncode == 2 and "has already finished (succeeded)" in again.stderr
    watched = bilevel("watch", run_id, *local, env=KEYS)  # past the old pause, to the end
    assert watched.returncode == 0 and "succeeded" in watched.stdout, watched.stderr


def test_a_server_refuses_base_urls_it_does_not_allow_and_resumes_only_paused_runs(
        tmp_path: Path, sandbox_image: str, server: FakeLLMServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
    from controller.api.gen.bilevel.v1 import runs_pb2_grpc
    from tests.test_api_harness import Stubs, field_violations, serving, surrogate_run

    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    request = surrogate_run(trials=1)
    request.proposer.kind = rpb.PROPOSER_KIND_LLM
    request.llm.base_url = server.anthropic_url
    with serving(tmp_path, sandbox_image) as controller:
        stubs = Stubs(controller.address)
        with pytest.raises(grpc.RpcError) as refused:
            stubs.runs.CreateRun(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not allowed by this controller" in field_violations(refused.value)[
            "llm.base_url"]
        assert server.requests == []
        run = stubs.runs.CreateRun(surrogate_run(trials=1), timeout=30)
        with pytest.raises(grpc.RpcError) as not_paused:
            stubs.runs.ResumeRun(rpb.ResumeRunRequest(run_id=run.id), timeout=30)
        assert not_paused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as clear_all:
            memory = runs_pb2_grpc.MemoryServiceStub(stubs.channel)  # type: ignore[no-untyped-call]
            memory.ClearLessons(rpb.ClearLessonsRequest(), timeout=30)
        assert "all" in field_violations(clear_all.value)
