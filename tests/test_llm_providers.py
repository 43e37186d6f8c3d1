"""Each provider through its real SDK against the fake server on 127.0.0.1: answers,
usage and cost, retries on 429/500/529/timeouts/malformed bodies, a clear terminal
error after the retry budget, keys that never show, base URLs the controller allows."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from controller.errors import FieldError
from controller.llm.accounting import CallRecord, MeteredProvider, Pricing
from controller.llm.capabilities import CapabilityMemory
from controller.llm.errors import LLMBudgetSpent, LLMConfigError, LLMUnavailable
from controller.llm.factory import build_provider
from controller.llm.keys import ApiKey, resolve_key
from controller.llm.providers import AnthropicProvider, OpenAIProvider
from controller.llm.retry import RetryingProvider
from controller.llm.settings import LLMAccess, LLMSettings
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from tests.fake_llm_server import Fail, FakeLLMServer, Malformed, Reply
from tests.test_loop_harness import TEST_KEY, llm_settings

PROVIDERS = ("anthropic", "openai")
REQUEST = LLMRequest(system="You propose experiments.",
                     messages=(ChatMessage("user", "Propose one change."),), max_tokens=256,
                     tag=CallTag(run_id="run-x", trial=3, call=0))


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def _url(server: FakeLLMServer, provider: str) -> str:
    return server.anthropic_url if provider == "anthropic" else server.openai_url


def _raw(server: FakeLLMServer, provider: str, timeout: float = 5.0) -> Provider:
    settings = llm_settings(_url(server, provider), provider, timeout_seconds=timeout)
    key = ApiKey(TEST_KEY)
    return AnthropicProvider(settings, key) if provider == "anthropic" \
        else OpenAIProvider(settings, key)


def _stack(server: FakeLLMServer, provider: str, records: list[CallRecord],
           attempts: int = 4, timeout: float = 5.0, budget: str = "",
           memory: CapabilityMemory | None = None) -> Provider:
    return build_provider(
        llm_settings(_url(server, provider), provider, max_attempts=attempts,
                     timeout_seconds=timeout),
        LLMAccess().allowing(_url(server, provider)), record=records.append,
        budget_spent=lambda: budget, replay_answers=lambda run: {}, capabilities=memory)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_call_returns_the_text_and_usage_and_sends_the_prompt_and_key(
        server: FakeLLMServer, provider: str) -> None:
    server.push(Reply('{"changes": {}}', input_tokens=321, output_tokens=45))
    response = _raw(server, provider).complete(REQUEST)
    assert response.text == '{"changes": {}}'
    assert (response.input_tokens, response.output_tokens) == (321, 45)
    sent = server.requests[0]
    assert sent.api == provider
    assert sent.system == "You propose experiments."
    assert sent.messages == [{"role": "user", "content": "Propose one change."}]
    assert sent.body["max_tokens"] == 256
    auth = sent.headers.get("x-api-key") or sent.headers.get("authorization", "")
    assert TEST_KEY in auth
    if provider == "anthropic":
        assert sent.body["model"] == "claude-sonnet-5-5"
    else:
        assert sent.body["model"] == "deepseek-chat"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limits_overload_server_errors_and_malformed_bodies_are_retried(
        server: FakeLLMServer, provider: str) -> None:
    overloaded = 529 if provider == "anthropic" else 503
    server.push(Fail(429, "slow down"), Fail(overloaded, "overloaded"), Fail(500), Malformed(),
                Reply("finally"))
    records: list[CallRecord] = []
    response = _stack(server, provider, records, attempts=5).complete(REQUEST)
    assert response.text == "finally"
    assert len(server.requests) == 5
    assert [bool(r.error) for r in records] == [True, True, True, True, False]
    assert "429" in records[0].error and str(overloaded) in records[1].error
    assert "malformed" in records[3].error
    assert records[-1].input_tokens == 120 and records[-1].tag.trial == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_answer_times_out_and_is_retried(server: FakeLLMServer, provider: str) -> None:
    server.push(Reply("too late", delay=1.5), Reply("in time"))
    records: list[CallRecord] = []
    start = time.monotonic()
    response = _stack(server, provider, records, timeout=0.5).complete(REQUEST)
    assert response.text == "in time" and time.monotonic() - start < 3.0
    assert "timed out" in records[0].error


@pytest.mark.parametrize("provider", PROVIDERS)
def test_exhausted_retries_raise_a_clear_terminal_error(server: FakeLLMServer,
                                                        provider: str) -> None:
    server.push(*[Fail(503, "down")] * 3)
    with pytest.raises(LLMUnavailable, match=r"failed 3 times in a row.*503.*bilevel resume"):
        _stack(server, provider, [], attempts=3).complete(REQUEST)
    assert len(server.requests) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bad_key_is_not_retried(server: FakeLLMServer, provider: str) -> None:
    server.push(Fail(401, "invalid x-api-key"), Reply("never asked"))
    with pytest.raises(LLMUnavailable, match=r"401.*check the API key.*not retryable"):
        _stack(server, provider, []).complete(REQUEST)
    assert len(server.requests) == 1


def test_retry_after_is_honoured_and_backoff_doubles() -> None:
    from controller.llm.errors import LLMError
    from controller.llm.replay import ReplayProvider

    retry = RetryingProvider(ReplayProvider("run-x", {}), 5, 1.0)
    assert retry.delay(1, LLMError("x", retryable=True, retry_after=7.0)) >= 7.0
    plain = LLMError("x", retryable=True)
    assert 0.5 <= retry.delay(1, plain) <= 1.0 and 2.0 <= retry.delay(3, plain) <= 4.0
    assert retry.delay(30, plain) == 60.0


def test_cost_is_accounted_per_call_from_the_price_table_or_the_settings(
        server: FakeLLMServer) -> None:
    server.push(Reply("a", input_tokens=1_000_000, output_tokens=100_000))
    records: list[CallRecord] = []
    _stack(server, "anthropic", records).complete(REQUEST)
    assert records[0].cost_usd == pytest.approx(3.0 + 1.5)  # claude-sonnet prices
    custom = Pricing.for_settings(LLMSettings(model="my-model", price_input_per_mtok=1.0,
                                              price_output_per_mtok=2.0))
    assert (custom.input_per_mtok, custom.output_per_mtok) == (1.0, 2.0)
    assert Pricing.for_settings(LLMSettings(provider="openai", model="deepseek-chat")) \
        .input_per_mtok == 0.27


def test_a_spent_budget_stops_calls_before_they_are_made(server: FakeLLMServer) -> None:
    provider = _stack(server, "openai", [], budget="LLM token budget of 10 spent")
    with pytest.raises(LLMBudgetSpent, match="token budget"):
        provider.complete(REQUEST)
    assert server.requests == []


def test_metering_records_failed_attempts_too(server: FakeLLMServer) -> None:
    server.push(Fail(429))
    records: list[CallRecord] = []
    metered = MeteredProvider(_raw(server, "anthropic"), Pricing(1, 1), records.append,
                              lambda: "")
    with pytest.raises(Exception, match="429"):
        metered.complete(REQUEST)
    assert len(records) == 1 and records[0].input_tokens == 0 and records[0].error


def test_keys_come_from_a_file_or_the_environment_and_never_show(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-0000\n")
    access = LLMAccess(key_files=(("anthropic", key_file),))
    key = resolve_key("anthropic", access, "")
    assert key.reveal() == "sk-from-file-0000"
    assert "sk-from" not in repr(key) and "sk-from" not in str(key) and "sk-from" not in f"{key}"
    assert resolve_key("openai", LLMAccess(), "").reveal() == TEST_KEY
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(LLMConfigError, match=r"set ANTHROPIC_API_KEY.*--llm-key-file"):
        resolve_key("anthropic", LLMAccess(), "")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert resolve_key("openai", LLMAccess(), "http://127.0.0.1:1/v1").reveal() == "no-key"
    # The provider stack logs retries; the key is in none of it.
    structlog.get_logger("t").warning("check", key=key)
    logging.getLogger("t").warning("%r", key)
    assert "sk-from" not in capsys.readouterr().err


def test_a_base_url_must_be_allowed_by_the_controller(server: FakeLLMServer) -> None:
    settings = llm_settings(server.anthropic_url)
    kwargs = dict(record=lambda r: None, budget_spent=lambda: "",
                  replay_answers=lambda run: {})
    with pytest.raises(FieldError, match="not allowed by this controller"):
        build_provider(settings, LLMAccess(), **kwargs)  # type: ignore[arg-type]
    build_provider(settings, LLMAccess(allowed_base_urls=(server.anthropic_url + "/",)),
                   **kwargs)  # type: ignore[arg-type]


def test_settings_are_validated_with_the_field_named() -> None:
    with pytest.raises(FieldError, match=r"llm.model"):
        LLMSettings(provider="openai").validate()
    with pytest.raises(FieldError, match=r"llm.provider"):
        LLMSettings(provider="gemini").validate()
    with pytest.raises(FieldError, match=r"llm.base_url"):
        LLMSettings(base_url="ftp://x").validate()
    with pytest.raises(FieldError, match=r"llm.replay_run"):
        LLMSettings(provider="replay").validate()
