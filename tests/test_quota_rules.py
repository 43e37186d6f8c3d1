"""Quotas per principal without a server: the [quotas.*] settings (file, environment,
errors naming the key), the refusal's wording, the daily LLM spend claimed atomically
against a real store, and stored bytes measured from a real state dir.
tests/test_quotas.py shows each quota on a real controller over a real socket."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.config import ConfigError, ServerConfig
from controller.config_file import load
from controller.llm.accounting import CallRecord
from controller.llm.spend import WINDOW_SECONDS, DailySpend, LLMQuotaSpent
from controller.llm.types import CallTag
from controller.quotas import QuotaLimits, Quotas
from controller.research.errors import CapacityError
from controller.research.run_quotas import RunQuotas
from controller.store import task_bundle
from controller.store.llm_calls import CallLog
from controller.store.runs import RunStore


def _load(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> ServerConfig:
    path = tmp_path / "bilevel.toml"
    path.write_text(toml)
    return load(path, {"BILEVEL_STATE_DIR": str(tmp_path / "state"), **(env or {})}, {},
                discover_gpus=lambda _url, _image: ())


def test_quota_tables_set_defaults_overrides_and_exemptions(tmp_path: Path) -> None:
    config = _load(tmp_path, """
[quotas.default]
runs = 2
slots = 2
stored_bytes = "1GiB"
llm_usd_per_day = 5
[quotas.principals.alice]
runs = 8
weight = 2
[quotas.principals.ops]
exempt = true
weight = 3
""", env={"BILEVEL_QUOTAS__PRINCIPALS__BOB__LLM_TOKENS_PER_DAY": "1000"})
    q = config.quotas
    assert q.of("carol") == QuotaLimits(runs=2, slots=2, stored_bytes=1 << 30,
                                        llm_usd_per_day=5.0)
    assert q.of("alice") == QuotaLimits(runs=8, slots=2, stored_bytes=1 << 30,
                                        llm_usd_per_day=5.0, weight=2.0)
    assert q.of("bob").llm_tokens_per_day == 1000 and q.of("bob").runs == 2
    assert q.of("ops") == QuotaLimits(weight=3.0)  # exempt: no limit, its weight kept
    assert q.origin("alice", "runs") == "quotas.principals.alice.runs"
    assert q.origin("alice", "slots") == "quotas.default.slots"


def test_without_quota_settings_nothing_is_limited(tmp_path: Path) -> None:
    assert _load(tmp_path).quotas.of("anyone") == QuotaLimits()


@pytest.mark.parametrize(("toml", "env", "message"), [
    ("[quotas.default]\nrun = 2\n", {},
     "unknown setting quotas.default.run: unknown quota 'run' in [quotas.default]; use runs"),
    ("[quotas.default]\nexempt = true\n", {}, "unknown quota 'exempt' in [quotas.default]"),
    ("[quotas]\nruns = 2\n", {}, "quota settings go in [quotas.default] or"),
    ("[quotas.principals.alice]\nruns = \"many\"\n", {},
     "quotas.principals.alice.runs (from"),
    ("[quotas.principals.alice]\nslots = 0\n", {},
     "bilevel.toml): must be >= 1, got 0: its jobs would wait forever"),
    ("", {"BILEVEL_QUOTAS__DEFAULT__WEIGHT": "0"},
     "quotas.default.weight (from BILEVEL_QUOTAS__DEFAULT__WEIGHT): must be in (0, 1000], "
     "got 0.0"),
    ("[quotas.principals.Alice]\nruns = 1\n", {}, "quotas.principals.Alice.runs (from "),
    ("[quotas.principals.Alice]\nruns = 1\n", {}, "bilevel.toml): principal name 'Alice': "
     "use 1-63 of a-z 0-9 . _ -, starting with a letter"),
    ("[quotas.principals.alice]\nexempt = \"yes\"\n", {}, "is not a valid boolean"),
])
def test_deny_invalid_quota_settings_naming_the_key(tmp_path: Path, toml: str,
                                                    env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, toml, env)
    assert message in str(info.value)


def test_a_refusal_names_the_quota_its_limit_and_the_use() -> None:
    quotas = Quotas(principals={"alice": {"runs": 2}})
    error = quotas.refusal("alice", "runs", 2, 1, " runs")
    assert isinstance(error, CapacityError)
    assert error.resource == "quotas.alice.runs"
    assert str(error).startswith("quota quotas.alice.runs exceeded: limit 2 runs, in use 2 "
                                 "runs, requested 1 runs (set by quotas.principals.alice.runs)")


# The daily LLM spend, against a real store


def _store_with_runs(tmp_path: Path, owners: dict[str, str]) -> RunStore:
    store = RunStore(tmp_path / "bilevel.sqlite3")
    for run_id, owner in owners.items():
        store.create_run(run_id, {}, owner)
    return store


def _call(tokens: int, usd: float, at: float) -> CallRecord:
    return CallRecord(CallTag(), "fake", "m", "", (), "ok", "", tokens, 0, usd, 0.1, at)


def test_recorded_use_counts_the_principals_runs_within_the_last_24_hours(
        tmp_path: Path) -> None:
    store = _store_with_runs(tmp_path, {"run-a1": "alice", "run-a2": "alice",
                                        "run-b1": "bob"})
    log, now = CallLog(store), time.time()
    log.record("run-a1", _call(100, 0.5, now - 60))
    log.record("run-a2", _call(50, 0.25, now - 3600))
    log.record("run-a1", _call(1000, 9.0, now - WINDOW_SECONDS - 60))  # a day ago
    log.record("run-b1", _call(7, 0.1, now))
    assert log.usage_of("alice", now - WINDOW_SECONDS) == (150, 0.75)
    assert log.usage_of("bob", now - WINDOW_SECONDS) == (7, 0.1)
    store.close()


def test_deny_concurrent_llm_calls_together_passing_a_daily_quota(tmp_path: Path) -> None:
    """Ten calls at once, each bounded at 100 tokens, against 250 left: two start."""
    store = _store_with_runs(tmp_path, {"run-a": "alice"})
    CallLog(store).record("run-a", _call(750, 0.0, time.time()))
    spend = DailySpend(Quotas(principals={"alice": {"llm_tokens_per_day": 1000}}),
                       CallLog(store).usage_of)
    tried, release = threading.Semaphore(0), threading.Event()

    def call(_: int) -> str:
        try:
            with spend.claim("alice", 100, 0.0):
                tried.release()
                release.wait(30)  # in flight until every call has tried
                return "ran"
        except LLMQuotaSpent as exc:
            tried.release()
            return str(exc)

    with ThreadPoolExecutor(10) as pool:
        outcomes = pool.map(call, range(10))
        assert all(tried.acquire(timeout=30) for _ in range(10))
        release.set()
        results = list(outcomes)
    assert results.count("ran") == 2
    refused = [r for r in results if r != "ran"]
    assert len(refused) == 8
    assert "quota quotas.alice.llm_tokens_per_day exceeded: limit 1000 tokens, in use 950 " \
           "tokens, requested 100 tokens" in refused[0]
    with spend.claim("alice", 250, 0.0):  # both calls ended: their claims were given back
        pass
    with spend.claim("bob", 10**9, 10**6):  # no quota for bob
        pass
    store.close()


def test_deny_a_call_over_the_daily_usd_quota(tmp_path: Path) -> None:
    store = _store_with_runs(tmp_path, {"run-a": "alice"})
    CallLog(store).record("run-a", _call(0, 1.5, time.time()))
    spend = DailySpend(Quotas(default=QuotaLimits(llm_usd_per_day=2.0)),
                       CallLog(store).usage_of)
    with spend.claim("alice", 0, 0.4):
        pass
    with pytest.raises(LLMQuotaSpent, match=r"quotas.alice.llm_usd_per_day exceeded: limit 2 "
                                            r"USD, in use 1.5 USD, requested 0.6 USD"), \
            spend.claim("alice", 0, 0.6):
        pass
    store.close()


# Stored bytes, measured from a real state dir


def test_stored_bytes_count_a_principals_runs_and_a_shared_task_copy_once(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    store = _store_with_runs(tmp_path, {"run-a1": "alice", "run-a2": "alice",
                                        "run-b1": "bob"})
    bundle = {"bilevel-task.toml": b"x", "data/blob.bin": b"\1" * (1 << 20)}
    for run_id in ("run-a1", "run-a2", "run-b1"):
        task_bundle.store(root, run_id, bundle)  # hard links to one shared copy
    quotas = RunQuotas(Quotas(default=QuotaLimits(stored_bytes=3 << 20)), store, root)
    alice, bob = quotas.stored_bytes("alice"), quotas.stored_bytes("bob")
    assert (1 << 20) < alice < (1 << 20) + (64 << 10)  # the copy once, plus folders
    assert (1 << 20) < bob <= alice
    quotas.check("alice", runs=2, pending_bytes=0, adding_bytes=1 << 20)
    with pytest.raises(CapacityError) as info:
        quotas.check("alice", runs=2, pending_bytes=1 << 20, adding_bytes=1 << 20)
    assert info.value.resource == "quotas.alice.stored_bytes"
    assert f"in use {alice + (1 << 20)} bytes, requested {1 << 20} bytes" in str(info.value)
    store.close()


def test_the_deploy_examples_quota_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "deploy" / "bilevel.toml").read_text()
    block = text[text.index("# [quotas.default]"):]
    config = _load(tmp_path, "\n".join(line.removeprefix("# ") for line in block.splitlines()))
    assert config.quotas.of("alice").runs == 8 and config.quotas.of("bob").runs == 2
    assert config.quotas.of("ops") == QuotaLimits()
