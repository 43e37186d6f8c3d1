"""Memory across principals: lessons and Level 2's verdicts belong to the principal whose
run made them. Over a real server, a principal lists and clears its own lessons only (an
admin: all; a viewer clears none); a run's proposer is offered only its owner's lessons,
Level 2's library bandit learns only from its owner's runs, and its portfolio is led only
by its owner's strategy results, unless the operator shares memory (memory.shared)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.llm.settings import LLMAccess
from controller.principals import Principal
from controller.research.level2.portfolio_proposer import PortfolioProposer
from controller.research.manager import ManagerConfig, RunManager
from controller.research.settings import OuterSettings
from controller.research.task import memory_key
from controller.store.artifacts import ArtifactStore
from controller.store.mechanisms import KEPT, MechanismLog, MechanismRow
from controller.store.memory import Lesson, MemoryStore, StrategyResult
from controller.store.runs import RunStore
from tests.principals_harness import ROLES, Caller, cluster, code_of, prepare
from tests.test_api_harness import ServerThread
from tests.test_loop_harness import TEST_KEY, SyntheticTask, llm_settings, run_settings

ALL = rpb.ClearLessonsRequest(all=True)
URL = "http://127.0.0.1:9"  # an LLM never asked: only the prompt's lessons are checked


@pytest.fixture
def state(tmp_path: Path) -> Path:
    prepare(tmp_path)
    return tmp_path


@pytest.fixture
def served(state: Path) -> Iterator[tuple[ServerThread, dict[str, Caller]]]:
    with cluster(state) as both:
        yield both


def _texts(caller: Caller) -> list[str]:
    return sorted(lesson.text for lesson in
                  caller.memory.ListLessons(rpb.ListLessonsRequest()).lessons)


def test_deny_listing_and_clearing_another_principals_lessons(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    assert _texts(c["alice"]) == ["alice: raising lr helped"]
    assert _texts(c["vera"]) == ["vera: raising lr helped"]
    assert len(_texts(c["root"])) == len(ROLES)
    # bob's "clear everything" clears bob's.
    assert c["bob"].memory.ClearLessons(ALL).deleted == 1
    assert _texts(c["bob"]) == [] and _texts(c["alice"]) == ["alice: raising lr helped"]
    code, text = code_of(lambda: c["vera"].memory.ClearLessons(ALL))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "viewer" in text
    assert _texts(c["vera"]) == ["vera: raising lr helped"]
    assert c["root"].memory.ClearLessons(ALL).deleted == len(ROLES) - 1


def test_sensitivity_without_the_owner_filter_bob_clears_alices_lessons(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: every principal treated as seeing everyone's lessons."""
    monkeypatch.setattr(Principal, "sees_everyone", property(lambda self: True))
    _, c = served
    assert "alice: raising lr helped" in _texts(c["bob"])
    assert c["bob"].memory.ClearLessons(ALL).deleted == len(ROLES)


def test_allow_shared_memory_lists_every_principals_lessons(state: Path) -> None:
    with cluster(state, shared_memory=True) as (_, c):
        assert len(_texts(c["alice"])) == len(ROLES)
        assert c["alice"].memory.ClearLessons(ALL).deleted == 1  # still only its own


class _NoEngine:
    """An engine for runs without Level 2: nothing asks it for a sandbox."""

    def get(self) -> Any:
        return SimpleNamespace(for_owner=lambda *args, **kwargs: None)


class _UnusedEngine:
    """An engine for a Level 2 run that is built, never started: its executor is wired
    to the mechanisms but never asked for a sandbox."""

    def get(self) -> Any:
        return SimpleNamespace(for_owner=lambda *args, **kwargs: SimpleNamespace())


def _offered(tmp_path: Path, owner: str, shared: bool) -> tuple[tuple[str, ...], Any]:
    """The lessons RunManager offers the proposer of `owner`'s new run, and the owner
    its memory reads (None: everyone's)."""
    store = RunStore(tmp_path / "db.sqlite3")
    task = SyntheticTask()
    memory = MemoryStore(store)
    if not memory.list():
        for who in ("alice", "bob"):
            memory.add([Lesson(memory_key(task), f"run-{who}", "helped", f"{who}'s lesson")],
                       who)
    manager = RunManager(store, ArtifactStore(tmp_path / "runs"), _NoEngine(),  # type: ignore[arg-type]
                         ManagerConfig(llm=LLMAccess(allowed_base_urls=(URL,)),
                                       shared_memory=shared))
    loop = manager._loop("run-new", run_settings(1, llm_settings(URL)),
                         task, owner)
    store.close()
    return loop.lessons, loop.memory_owner


def test_deny_a_runs_proposer_reads_another_principals_lessons(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    assert _offered(tmp_path, "alice", shared=False) == (("alice's lesson",), "alice")
    # The operator's choice: memory.shared offers everyone's.
    lessons, owner = _offered(tmp_path, "alice", shared=True)
    assert sorted(lessons) == ["alice's lesson", "bob's lesson"] and owner is None


def test_deny_level2_learns_from_another_principals_verdicts(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    log = MechanismLog(store)
    for run_id, owner in (("run-a1", "alice"), ("run-b1", "bob"), ("run-a2", "alice")):
        store.create_run(run_id, {"task": {"preset": "surrogate"}}, owner)
        log.put(run_id, MechanismRow(f"m-{run_id}", "library", "", status=KEPT))
    assert [o.run_id for o in log.outcomes("run-a2", "alice")] == ["run-a1"]
    # Unfiltered (memory.shared), bob's verdict would count too.
    assert [o.run_id for o in log.outcomes("run-a2", None)] == ["run-a1", "run-b1"]
    store.close()


def _lead(tmp_path: Path, owner: str, shared: bool) -> str | None:
    """The lead RunManager gives `owner`'s new Level 2 run, from strategy results where
    alice's runs say local wins and bob's say tpe wins, by more."""
    store = RunStore(tmp_path / "db.sqlite3")
    task = SyntheticTask()
    memory = MemoryStore(store)
    if not memory.strategy_results(memory_key(task)):
        for who, winner, margin in (("alice", "local", 1.0), ("bob", "tpe", 2.0)):
            for strategy in ("local", "tpe"):
                memory.add_strategy_result(StrategyResult(
                    memory_key(task), f"run-{who}-{strategy}", strategy, 9,
                    margin if strategy == winner else 0.1, who))
    manager = RunManager(store, ArtifactStore(tmp_path / "runs"), _UnusedEngine(),  # type: ignore[arg-type]
                         ManagerConfig(shared_memory=shared))
    settings = replace(run_settings(1), outer=OuterSettings(levels=("1", "2"),
                                                            mechanism_source="library"))
    proposer = manager._loop("run-new", settings, task, owner).planner.proposer
    proposer = getattr(proposer, "inner", proposer)  # under Level 2's mechanisms
    store.close()
    assert isinstance(proposer, PortfolioProposer)
    return proposer.lead


def test_deny_a_portfolio_is_led_by_another_principals_strategy_results(
        tmp_path: Path) -> None:
    assert _lead(tmp_path, "alice", shared=False) == "local"
    assert _lead(tmp_path, "bob", shared=False) == "tpe"
    # Unfiltered (memory.shared), both principals' runs count: tpe's mean is higher.
    assert _lead(tmp_path, "alice", shared=True) == "tpe"
