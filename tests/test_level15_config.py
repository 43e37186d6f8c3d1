"""Level 1.5: adjustments obey their caps, invalid answers go back with the reason and
are recorded, frozen knobs stay untouched, and the offline rule controller runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from controller.llm.settings import LLMAccess
from controller.research.level1.run_proposer import build_run_provider
from controller.research.level15.loop import AdjustmentError, ConfigState, validate
from controller.research.outer import attach_outer_levels
from controller.research.settings import OuterSettings
from controller.store.records import EventKind, RunState
from tests.fake_llm_server import FakeLLMServer, Reply
from tests.test_loop_harness import TEST_KEY, SyntheticTask, llm_settings, make_loop, run_settings

KNOBS = ["DEPTH", "MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY"]


def test_validate_enforces_every_cap() -> None:
    outer = OuterSettings(max_freeze=1, max_unfreeze=1, max_frozen=2)
    state = ConfigState(frozen=["DEPTH"])
    ok = validate({"freeze": ["MATRIX_LR"], "unfreeze": [], "strategy": "exploit",
                   "guidance": "refine"}, state, KNOBS, outer)
    assert ok.freeze == ("MATRIX_LR",)
    for raw, reason in [
            ({"freeze": ["MATRIX_LR", "WEIGHT_DECAY"], "strategy": "explore"}, "at most 1"),
            ({"unfreeze": ["MATRIX_LR"], "strategy": "explore"}, "is not frozen"),
            ({"freeze": ["LEARNING_RATE"], "strategy": "explore"}, "not a knob"),
            ({"freeze": ["DEPTH"], "strategy": "explore"}, "already frozen"),
            ({"strategy": "yolo"}, "strategy"),
            ({"strategy": "explore", "guidance": "x" * 700}, "guidance"),
            ({"strategy": "explore", "restart_from": 3}, "unknown keys")]:
        with pytest.raises(AdjustmentError, match=reason):
            validate(raw, state, KNOBS, outer)
    full = ConfigState(frozen=["DEPTH", "MATRIX_LR"])
    with pytest.raises(AdjustmentError, match="at most 2 knobs may be frozen"):
        validate({"freeze": ["EMBEDDING_LR"], "strategy": "explore"}, full, KNOBS, outer)
    with pytest.raises(AdjustmentError, match="leave at least 2"):
        validate({"freeze": ["EMBEDDING_LR"], "strategy": "explore"}, state, KNOBS[:3],
                 OuterSettings(max_frozen=5))


def test_llm_config_loop_applies_capped_adjustments_and_refuses_bad_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    with FakeLLMServer() as server:
        server.push(
            Reply(json.dumps({"freeze": ["MATRIX_LR", "DEPTH", "SCALAR_LR"],
                              "strategy": "exploit", "guidance": "g"})),
            Reply(json.dumps({"freeze": ["MATRIX_LR"], "strategy": "exploit",
                              "guidance": "leave the matrix LR alone"})),
            Reply("no JSON at all"), Reply("still none"), Reply("nope"))
        settings = run_settings(8)
        settings = replace(settings, llm=llm_settings(server.anthropic_url),
                           outer=OuterSettings(levels=("1", "1.5"), config_controller="llm",
                                               l15_every=3, max_freeze=1, l15_retries=2))
        settings.validate()
        parts = make_loop(tmp_path, SyntheticTask(), settings)
        attach_outer_levels(parts.loop, None, lambda: build_run_provider(
            "run-test", settings, parts.store, LLMAccess().allowing(server.anthropic_url),
            parts.loop.stop.event))
        parts.loop.run()
    assert parts.store.get_run("run-test").state is RunState.SUCCEEDED
    cycles = [e.payload for e in parts.store.events_after("run-test", 0)
              if e.kind is EventKind.CONFIG_ADJUSTED]
    assert [c["trial"] for c in cycles] == [3, 6]
    first, second = cycles
    assert first["applied"] and first["freeze"] == ["MATRIX_LR"]
    assert first["rejected"] == ["freeze at most 1 knobs per cycle"]
    assert "Rejected" not in server.requests[0].text
    assert "freeze at most 1 knobs per cycle" in server.requests[1].text
    assert not second["applied"] and len(second["rejected"]) == 3
    assert second["frozen"] == ["MATRIX_LR"]  # a refused cycle changes nothing
    later = [t for t in parts.store.trials("run-test") if t.index > 3]
    assert later and all("MATRIX_LR" not in t.changes for t in later)


def test_rule_config_loop_runs_offline_and_labels_itself(tmp_path: Path) -> None:
    settings = replace(run_settings(12), outer=OuterSettings(
        levels=("1", "1.5"), l15_every=4, max_freeze=1, max_frozen=2))
    settings.validate()
    parts = make_loop(tmp_path, SyntheticTask(), settings)
    attach_outer_levels(parts.loop, None, lambda: pytest.fail("no LLM offline"))
    parts.loop.run()
    cycles = [e.payload for e in parts.store.events_after("run-test", 0)
              if e.kind is EventKind.CONFIG_ADJUSTED]
    assert [c["trial"] for c in cycles] == [4, 8, 12]
    assert all("offline" in c["controller"] and c["applied"] for c in cycles)
    assert all(len(c["freeze"]) <= 1 and len(c["frozen"]) <= 2 for c in cycles)
