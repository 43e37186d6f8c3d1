"""Memory's lead for Level 2's portfolio, on the real loop and store: a finished run that
searched with one strategy records what it gained (on the final check's fresh seeds
when it ran one); a portfolio's run records nothing (its arms' results depend on how it
allocated); records are per task and owner, and clearing a task's memory clears them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.research.level2 import portfolio
from controller.research.settings import OuterSettings
from controller.store.memory import MemoryStore, StrategyResult
from controller.store.records import EventKind
from controller.store.runs import RunStore
from tests.test_loop_harness import SyntheticTask, make_loop, run_settings


def _finished_check(store: RunStore, run_id: str) -> dict[str, Any] | None:
    [finished] = [e.payload for e in store.events_after(run_id, 0)
                  if e.kind is EventKind.RUN_FINISHED]
    check = finished["final_check"]
    return check if isinstance(check, dict) else None


def test_a_single_strategy_run_records_its_gain_and_a_portfolio_run_does_not(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "db.sqlite3")
    task = SyntheticTask()
    # In-run gain when there is no final check: baseline minus best.
    local = run_settings(8, seed=2, final_seeds=0)
    make_loop(tmp_path, task, local, run_id="run-local", store=store).loop.run()
    # The final check's fresh-seed gain when there is one.
    tpe = run_settings(8, seed=2, final_seeds=2)
    tpe = replace(tpe, proposer=replace(tpe.proposer, kind="tpe"))
    make_loop(tmp_path, task, tpe, run_id="run-tpe", store=store).loop.run()
    both = replace(run_settings(8, seed=2, final_seeds=0),
                   outer=OuterSettings(levels=("1", "2")))
    make_loop(tmp_path, task, both, run_id="run-portfolio", store=store).loop.run()
    assert any(t.arm for t in store.trials("run-portfolio")), "the portfolio did not run"

    records = {r.run_id: r for r in MemoryStore(store).strategy_results(task.name)}
    assert set(records) == {"run-local", "run-tpe"}
    run = store.get_run("run-local")
    assert run.baseline_val_bpb is not None and run.best_val_bpb is not None
    assert records["run-local"] == StrategyResult(
        task.name, "run-local", "local", run.trials_done, run.baseline_val_bpb - run.best_val_bpb,
        run.owner)
    check = _finished_check(store, "run-tpe")
    assert records["run-tpe"].strategy == "tpe"
    if check is None:  # the best was the baseline: nothing to check, in-run gain 0
        assert records["run-tpe"].gain == 0.0
    else:
        assert records["run-tpe"].gain == -check["delta"]
    assert portfolio.lead_from([(r.strategy, r.gain) for r in records.values()]) == max(
        records.values(), key=lambda r: r.gain).strategy


def test_strategy_results_are_per_task_and_owner_and_cleared_with_the_lessons(
        tmp_path: Path) -> None:
    memory = MemoryStore(RunStore(tmp_path / "db.sqlite3"))
    memory.add_strategy_result(StrategyResult("surrogate", "r1", "local", 30, 0.01, "alice"))
    memory.add_strategy_result(StrategyResult("surrogate", "r2", "tpe", 30, 0.0, "alice"))
    memory.add_strategy_result(StrategyResult("blobs", "r3", "tpe", 30, 0.8, "alice"))
    between = time.time()
    memory.add_strategy_result(StrategyResult("surrogate", "r4", "tpe", 30, 0.5, "bob"))
    # A resumed run reads the records made before it started, not one made since.
    assert [r.run_id for r in memory.strategy_results("surrogate", before=between)] == \
        ["r2", "r1"]
    assert [r.run_id for r in memory.strategy_results("surrogate", owner="alice")] == \
        ["r2", "r1"]  # newest first
    assert [r.run_id for r in memory.strategy_results("surrogate")] == ["r4", "r2", "r1"]
    memory.clear("surrogate", owner="alice")
    assert [r.run_id for r in memory.strategy_results("surrogate")] == ["r4"]
    assert [r.run_id for r in memory.strategy_results("blobs")] == ["r3"]
