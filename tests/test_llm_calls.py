"""What a slow or limited real server needs from our LLM calls, through the real SDKs
against the fake server on 127.0.0.1: streaming (a slow model that keeps sending is not
a timeout), structured output with a clean fallback, bounded tokens per call kind, a
timeout that is not retried identically, and the trainer's facts in the prompt."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydantic
import pytest
from anthropic.types import message_create_params

from controller.llm.accounting import CallRecord
from controller.llm.errors import LLMUnavailable
from controller.llm.limits import CALL_MAX_TOKENS
from controller.llm.types import ChatMessage, LLMRequest
from controller.research.task import TrialOutcome
from controller.store.db import Database
from controller.store.llm_calls import CallLog
from controller.store.llm_capabilities import CapabilityStore
from tests.fake_llm_server import Fail, FakeLLMServer, Reply
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
    with FakeLLMServer(response_formats=()) as old:
        old.push(Reply('{"changes": {"A": 1}}'), Reply('{"changes": {"B": 2}}'))
        provider = _raw(old, "openai")
        assert provider.complete(_request(schema=SCHEMA)).text == '{"changes": {"A": 1}}'
        assert provider.complete(_request(schema=SCHEMA)).text == '{"changes": {"B": 2}}'
        # Each refused form once, then never again: the step is remembered, and the
        # schema goes into the prompt instead.
        assert [_format(r.body) for r in old.requests] == [
            "json_schema", "json_object+schema", "json_object", None, None]
        assert json.dumps(SCHEMA, separators=(",", ":")) in old.requests[-1].system


def _format(body: dict[str, object]) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    return "json_object+schema" if fmt.get("type") == "json_object" and "schema" in fmt \
        else str(fmt.get("type"))


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_refused_response_format_steps_down_whatever_the_status_and_is_remembered(
        tmp_path: Path, status: int) -> None:
    """llama.cpp's server refuses json_schema with HTTP 500 and a validation body; the
    provider asks again one step down (never the identical request), remembers the step
    per base URL and model in the store, and the next provider starts there."""
    memory = CapabilityStore(Database(tmp_path / "store.db"))
    with FakeLLMServer(response_formats=("json_object+schema", "json_object"),
                       refusal_status=status) as llama:
        llama.push(Reply('{"changes": {"A": 1}}'), Reply('{"changes": {"B": 2}}'))
        records: list[CallRecord] = []
        first = _stack(llama, "openai", records, attempts=1, memory=memory)
        assert first.complete(_request(schema=SCHEMA)).text == '{"changes": {"A": 1}}'
        assert [_format(r.body) for r in llama.requests] == ["json_schema",
                                                             "json_object+schema"]
        assert records[-1].notes and "json_schema -> json_object+schema" in records[-1].notes[0]
        url = llama.openai_url
        assert memory.get(url, "deepseek-chat")["structured"] == "json_object+schema"
        assert f"HTTP {status}" in memory.reason(url, "deepseek-chat")
        # A new provider (a resumed run, the next run) starts at the remembered step.
        second = _stack(llama, "openai", [], attempts=1, memory=memory)
        assert second.complete(_request(schema=SCHEMA)).text == '{"changes": {"B": 2}}'
        assert _format(llama.requests[-1].body) == "json_object+schema"
        assert len(llama.requests) == 3


def test_a_server_error_that_names_a_field_is_not_retried_identically() -> None:
    """A 500 whose body is a validation error of a field we cannot drop is a request
    error: no retry of the same request; a bare 500 stays transient."""
    with FakeLLMServer() as server:
        server.push(Fail(500, "[{'loc': ('body', 'messages', 0), 'msg': 'bad'}]"))
        with pytest.raises(LLMUnavailable, match="not retryable"):
            _stack(server, "openai", [], attempts=4).complete(_request())
        assert len(server.requests) == 1
        server.push(Fail(500, "boom"), Reply("ok"))
        assert _stack(server, "openai", [], attempts=4).complete(_request()).text == "ok"


def test_a_server_without_usage_in_streams_gets_estimates_marked_as_such() -> None:
    with FakeLLMServer(stream_usage=False) as server:
        server.push(Reply("x" * 400, input_tokens=999, output_tokens=99))
        records: list[CallRecord] = []
        response = _stack(server, "openai", records, attempts=1).complete(_request())
        assert response.usage_estimated and response.output_tokens == 100
        assert records[0].usage_estimated and records[0].to_dict()["usage_estimated"]


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


def test_anthropic_requests_mark_the_stable_prefix_for_the_prompt_cache_and_price_it(
        tmp_path: Path, server: FakeLLMServer) -> None:
    """Every proposal's system prompt (role, task, answer format, knobs) is sent as a
    text block with cache_control, in a request the SDK's own types accept; the cache's
    reads and writes come back per call, are priced at the cache's rates and are summed
    in the run's summary."""
    server.push(Reply(params_answer({"DEPTH": 10}), input_tokens=50, cache_write=1500),
                Reply(params_answer({"MATRIX_LR": 0.05}), input_tokens=80, cache_read=1500))
    parts = make_loop(tmp_path, SyntheticTask(), run_settings(2,
                                                              llm_settings(server.anthropic_url)))
    parts.loop.run()
    first, second = server.requests
    adapter = pydantic.TypeAdapter(message_create_params.MessageCreateParamsStreaming)
    for request in (first, second):
        valid = adapter.validate_python(request.body)
        system: list[Any] = list(valid["system"])  # iterating validates each block
        list(valid["messages"])
        assert len(system) == 1 and system[0]["cache_control"] == {"type": "ephemeral"}
    # The prefix is the same in both calls up to the knobs' current values, which change
    # only when a candidate is kept (trial 1 was: DEPTH 8 -> 10); the trace is outside it.
    head = first.system.index("# Knobs")
    assert first.system[:head] == second.system[:head] and "# Task" in first.system[:head]
    assert "DEPTH = 8" in first.system and "DEPTH = 10" in second.system
    assert "# Recent trials" in second.messages[0]["content"]
    calls = CallLog(parts.store).calls("run-test")
    assert [(c["cache_write_tokens"], c["cache_read_tokens"]) for c in calls] == \
        [(1500, 0), (0, 1500)]
    assert calls[0]["input_tokens"] == 1550 and calls[1]["input_tokens"] == 1580
    # Sonnet's $3/M input: a cache write costs 1.25x, a read 0.1x.
    assert calls[0]["cost_usd"] == pytest.approx((50 * 3 + 1500 * 3.75 + 40 * 15) / 1e6)
    assert calls[1]["cost_usd"] == pytest.approx((80 * 3 + 1500 * 0.3 + 40 * 15) / 1e6)
    summary = parts.store.get_run("run-test").summary
    assert "1,500 read from the prompt cache, 1,500 written to it" in summary


def test_openai_cached_prompt_tokens_are_recorded(server: FakeLLMServer) -> None:
    server.push(Reply("ok", input_tokens=2000, cache_read=1536))
    records: list[CallRecord] = []
    response = _stack(server, "openai", records, attempts=1).complete(_request())
    assert (response.input_tokens, response.cache_read_tokens) == (2000, 1536)
    assert records[0].cache_read_tokens == 1536


def test_a_server_that_cuts_concurrent_streams_short_is_then_called_one_at_a_time(
        tmp_path: Path) -> None:
    """The proposer and Level 2's designer call the same local server at once; llama.cpp's
    server ends the stream in progress when the other request arrives. Neither cut-short
    answer is taken for an answer; the endpoint is then called one request at a time
    (remembered in the store), and both calls get their whole answer."""
    memory = CapabilityStore(Database(tmp_path / "store.db"))
    text = '{"changes": {"A": 1}, "hypothesis": "a long enough answer to overlap"}'
    with FakeLLMServer(responder=lambda r: Reply(text, chunk_delay=0.02),
                       interrupts=True) as llama:
        records: list[CallRecord] = []
        providers = [_stack(llama, "openai", records, attempts=3, memory=memory)
                     for _ in range(2)]
        answers: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
            i, providers[i].complete(_request()).text)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == {0: text, 1: text}
        assert memory.get(llama.openai_url, "deepseek-chat")["concurrent"] == "false"
        assert any("one at a time" in n for r in records for n in r.notes)
        assert all(not r.error for r in records)  # no attempt failed: each was retried alone
        # From now on a third provider of the endpoint does not overlap the others.
        third = _stack(llama, "openai", [], attempts=1, memory=memory)
        assert third.complete(_request()).text == text


def test_a_stream_that_ends_without_a_finish_reason_is_not_an_answer(
        server: FakeLLMServer) -> None:
    """A second request cuts the first one's stream short, after some text: that text
    is not taken for an answer; the first call is asked again, alone."""
    server.interrupts = True
    server.push(Reply("x" * 200, chunk_delay=0.05), Reply("second"), Reply("again"))
    first = _raw(server, "openai")
    result: dict[str, str] = {}
    worker = threading.Thread(target=lambda: result.update(
        text=first.complete(_request()).text))
    worker.start()
    time.sleep(0.3)  # the first stream is under way, some of its text sent
    assert _raw(server, "openai").complete(_request()).text == "second"
    worker.join(10)
    assert result == {"text": "again"}


def test_level2_asks_for_the_specification_as_structured_output_and_reads_it_tolerantly(
        ) -> None:
    """Against llama.cpp's server the spec step came back as prose and the round was
    lost: the spec is now asked for with a schema (negotiated like a proposal's) and read
    by the same capped, tolerant reader - JSON in prose with a trailing comma passes; an
    answer with no object at all still ends the round, saying why."""
    from controller.research.level2.design import DesignError, LLMDesigner
    from controller.research.settings import OuterSettings

    code = "```python\nclass Probe:\n    def __init__(self):\n        pass\n```"
    outer = OuterSettings(levels=("1", "2"), mechanism_source="llm")
    with FakeLLMServer(response_formats=("json_object+schema", "json_object")) as llama:
        llama.push(Reply("1. an idea"), Reply("SELECTED: 1\nFIELD: control"),
                   Reply('Here it is: {"name": "Probe Step", "field": "control", '
                         '"hooks": ["filter"], "description": "d",} done'),
                   *[Reply(code)] * (1 + outer.code_retries))  # the gate asks for fixes
        designer = LLMDesigner(_stack(llama, "openai", [], attempts=1), "run-x", outer, 4096)
        made = designer.design(3, 1, [], [])
        assert made.name == "probe_step" and made.field == "control"
        spec_request = next(r for r in llama.requests
                            if "Step 3" in r.body["messages"][-1]["content"])
        assert "Step 3: specification" in spec_request.body["messages"][-1]["content"]
        assert _format(spec_request.body) in ("json_schema", "json_object+schema")
        assert _format(llama.requests[0].body) is None  # free text where prose is wanted

        llama.push(Reply("1. an idea"), Reply("SELECTED: 1"), Reply("no object here"))
        with pytest.raises(DesignError, match=r"not a JSON object .*no JSON object found"):
            designer.design(4, 2, [], [])
