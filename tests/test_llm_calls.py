"""What a slow or limited real server needs from our LLM calls, through the real SDKs
against the fake server on 127.0.0.1: streaming (a slow model that keeps sending is not
a timeout), structured output with a clean fallback, bounded tokens per call kind, a
timeout that is not retried identically, and the trainer's facts in the prompt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from controller.llm.limits import CALL_MAX_TOKENS
from controller.llm.types import ChatMessage, LLMRequest
from controller.research.task import TrialOutcome
from tests.fake_llm_server import FakeLLMServer, Reply
from tests.test_llm_providers import _raw, _stack
from tests.test_loop_harness import (
    TEST_KEY,
    SyntheticTask,
    llm_settings,
    make_loop,
    params_answer,
    run_settings,
)

PROVIDERS = ("anthropic", "openai")
SCHEMA = {"type": "object", "properties": {"changes": {"type": "object"}},
          "required": ["changes"]}


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def _request(max_tokens: int = 256, schema: dict[str, Any] | None = None) -> LLMRequest:
    return LLMRequest(system="s", messages=(ChatMessage("user", "propose"),),
                      max_tokens=max_tokens, response_schema=schema)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_model_that_keeps_streaming_is_not_a_timeout(server: FakeLLMServer,
                                                             provider: str) -> None:
    text = '{"changes": {"DEPTH": 9}, "hypothesis": "deeper is better here"}'  # 17 chunks
    server.push(Reply(text, chunk_delay=0.1))  # ~1.7 s in all, never 0.5 s silent
    response = _raw(server, provider, timeout=0.5).complete(_request())
    assert response.text == text
    assert server.requests[0].body["stream"] is True
    assert len(server.requests) == 1


def test_structured_output_is_asked_for_and_a_server_without_it_is_asked_again_without(
        ) -> None:
    with FakeLLMServer() as plain:
        plain.push(Reply('{"changes": {}}'))
        _raw(plain, "openai").complete(_request(schema=SCHEMA))
        sent = plain.requests[0].body["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == SCHEMA
    with FakeLLMServer(reject_response_format=True) as old:
        old.push(Reply('{"changes": {"A": 1}}'), Reply('{"changes": {"B": 2}}'))
        provider = _raw(old, "openai")
        assert provider.complete(_request(schema=SCHEMA)).text == '{"changes": {"A": 1}}'
        assert provider.complete(_request(schema=SCHEMA)).text == '{"changes": {"B": 2}}'
        # One refused request, then never again: the fallback is remembered.
        assert ["response_format" in r.body for r in old.requests] == [True, False, False]


def test_a_timed_out_call_is_retried_with_more_patience_and_fewer_tokens(
        server: FakeLLMServer) -> None:
    server.push(Reply("too late", delay=0.8), Reply("in time", delay=0.8))
    records: list[Any] = []
    provider = _stack(server, "openai", records, timeout=0.5)
    response = provider.complete(_request(max_tokens=1024))
    assert response.text == "in time"
    assert [r.body["max_tokens"] for r in server.requests] == [1024, 512]
    assert "timed out" in records[0].error and not records[1].error


@dataclass
class FactsTask(SyntheticTask):
    """The synthetic task reporting the trainer's summary facts, as the trainer task does."""

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        outcome = super().evaluate(source, seed, cancel)
        facts = {"num_steps": 412, "total_tokens_M": 6.8, "num_params_M": 1.3,
                 "training_seconds": 15.2, "device": "cpu (2 threads)"}
        return replace(outcome, metrics={**outcome.metrics, **facts}, memory_gb=0.75)


def test_params_calls_ask_for_a_bounded_answer_shaped_by_the_knobs_and_see_training_facts(
        tmp_path: Path, server: FakeLLMServer) -> None:
    server.push(Reply(params_answer({"MATRIX_LR": 0.06}, "a higher matrix LR")),
                Reply(params_answer({"DEPTH": 10}, "deeper")))
    parts = make_loop(tmp_path, FactsTask(),
                      run_settings(2, llm_settings(server.openai_url, "openai")))
    parts.loop.run()
    first, second = server.requests
    assert first.body["max_tokens"] == CALL_MAX_TOKENS["params"]
    changes = first.body["response_format"]["json_schema"]["schema"]["properties"]["changes"]
    assert changes["properties"]["MATRIX_LR"] == {"type": "number", "minimum": 0.001,
                                                  "maximum": 0.5}
    assert changes["additionalProperties"] is False
    # The second prompt shows trial 1's training facts and the hardware it ran on.
    assert "Trials train on cpu (2 threads)" in second.text
    assert "steps 412, tokens 6.8M, params 1.3M, train 15s, peak mem 0.75GB" in second.text
