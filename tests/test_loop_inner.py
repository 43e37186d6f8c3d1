"""Level 1: baseline first, propose -> validate -> sandbox -> keep/discard, budgets,
crashes recorded with their traceback, restarts continue from the incumbent."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.level1.proposer import ProposerContext
from controller.research.settings import Budgets, ProposerSettings, RunSettings, SearchSettings
from controller.research.task import TrialOutcome
from controller.research.tasks.surrogate import SOURCE, SPACE, SurrogateTask
from controller.sandbox.backend import SandboxBackend
from controller.store.artifacts import ArtifactStore
from controller.store.records import EventKind, RunState, TrialStatus
from controller.store.runs import RunStore
from trainer import knobs

BASELINE = SOURCE.read_text()


# Knobs and proposals (no Docker).


def test_knobs_are_read_without_running_the_source() -> None:
    values = knobs.read_knobs(BASELINE)
    assert values["DEPTH"] == 8 and values["TOTAL_BATCH_SIZE"] == 2**19
    assert values["WINDOW_PATTERN"] == "SSSL"


def test_write_knobs_changes_one_line_per_knob_and_keeps_comments() -> None:
    out = knobs.write_knobs(BASELINE, {"DEPTH": 9, "MATRIX_LR": 0.05})
    changed = [(a, b) for a, b in zip(BASELINE.splitlines(), out.splitlines(), strict=True)
               if a != b]
    assert changed == [("DEPTH = 8  # transformer layers", "DEPTH = 9  # transformer layers"),
                       ("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")]
    with pytest.raises(knobs.KnobError, match="unknown knob 'NOT_THERE'"):
        knobs.write_knobs(BASELINE, {"NOT_THERE": 1})


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), index=st.integers(1, 10_000))
def test_random_proposals_stay_in_range_and_are_deterministic(seed: int, index: int) -> None:
    proposer = LocalPerturbation(seed, ProposerSettings(max_changes=3, step=1.0))
    ctx = ProposerContext(trial_index=index, incumbent=knobs.read_knobs(BASELINE),
                          space=SPACE, history=())
    proposal = proposer.propose(ctx)
    SPACE.check(proposal.changes)  # raises if out of range
    assert 1 <= len(proposal.changes) <= 3
    assert all(ctx.incumbent[k] != v for k, v in proposal.changes.items())
    assert proposer.propose(ctx) == proposal
    assert "[local]" in proposal.description


def test_frozen_knobs_are_never_proposed() -> None:
    space = SPACE.without(("DEPTH", "MATRIX_LR"))
    proposer = LocalPerturbation(0, ProposerSettings(max_changes=4))
    for i in range(200):
        changes = proposer.propose(ProposerContext(i, knobs.read_knobs(BASELINE), space, ()))
        assert not {"DEPTH", "MATRIX_LR"} & set(changes.changes)


# The loop against the surrogate task in real containers.


def _loop(tmp_path: Path, task: SurrogateTask, trials: int, stop: StopSignal | None = None,
          run_id: str = "run-test", create: bool = True) -> tuple[InnerLoop, RunStore]:
    store = RunStore(tmp_path / "db.sqlite3")
    settings_ = RunSettings(search=SearchSettings(seed=1), budgets=Budgets(max_trials=trials))
    if create:
        store.create_run(run_id, settings_.to_dict())
    loop = InnerLoop(run_id, settings_, task,
                     LocalPerturbation(1, settings_.proposer), store,
                     ArtifactStore(tmp_path / "runs"), stop or StopSignal())
    return loop, store


@pytest.mark.docker
def test_short_run_lowers_val_bpb_or_says_honestly_that_it_did_not(
        tmp_path: Path, executor: SandboxBackend) -> None:
    loop, store = _loop(tmp_path, SurrogateTask(executor), trials=10)
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 11
    assert run.baseline_val_bpb is not None and run.best_val_bpb is not None
    if run.best_val_bpb < run.baseline_val_bpb:
        assert "beats the baseline" in run.summary
    else:
        assert "no improvement over the baseline" in run.summary
    # With this seed the local baseline does find a better configuration.
    assert run.best_val_bpb < run.baseline_val_bpb
    trials = store.trials("run-test")
    kept = [t.val_bpb for t in trials if t.status is TrialStatus.KEEP and t.val_bpb]
    assert kept == sorted(kept, reverse=True)  # every keep beat the incumbent
    tsv = (tmp_path / "runs" / "run-test" / "results.tsv").read_text().splitlines()
    assert len(tsv) == 12


@pytest.mark.docker
def test_crash_is_recorded_with_its_traceback_and_the_run_goes_on(
        tmp_path: Path, executor: SandboxBackend) -> None:
    crashing = BASELINE.replace("def main():", "def main():\n    if (DEPTH, EMBEDDING_LR, "
                                "MATRIX_LR, WEIGHT_DECAY) != (8, 0.6, 0.04, 0.2):\n"
                                "        raise RuntimeError('diverged')")
    loop, store = _loop(tmp_path, SurrogateTask(executor, baseline=crashing), trials=4)
    loop.run()
    trials = store.trials("run-test")
    crashes = [t for t in trials if t.status is TrialStatus.CRASH]
    assert len(trials) == 5 and store.get_run("run-test").state is RunState.SUCCEEDED
    moved = {"DEPTH", "EMBEDDING_LR", "MATRIX_LR", "WEIGHT_DECAY"}
    diverged = [t for t in crashes if moved & set(t.changes)]
    assert diverged, [t.changes for t in trials]
    for t in diverged:  # other crashes are the surrogate's modelled out-of-memory
        assert t.exception is not None and t.exception["type"] == "RuntimeError"
        assert t.exception["frames"][-1]["name"] == "main"


@pytest.mark.docker
def test_baseline_crash_fails_the_run(tmp_path: Path, executor: SandboxBackend) -> None:
    loop, store = _loop(tmp_path, SurrogateTask(executor, baseline="raise SystemExit(3)\n"),
                        trials=3)
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.FAILED and "baseline crashed" in run.stop_reason


class _StopAfter:
    """A surrogate task that asks the loop to shut down while trial `n` runs."""

    def __init__(self, inner: SurrogateTask, stop: StopSignal, n: int) -> None:
        self.inner, self.stop, self.n, self.calls = inner, stop, n, 0
        self.name = inner.name
        self.baseline_source = inner.baseline_source
        self.search_space = inner.search_space
        self.read_knobs = inner.read_knobs
        self.apply = inner.apply

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        self.calls += 1
        if self.calls == self.n + 1:
            self.stop.request("shutdown")
        return self.inner.evaluate(source, seed, cancel)


@pytest.mark.docker
def test_restart_continues_from_the_incumbent_without_losing_or_repeating_trials(
        tmp_path: Path, executor: SandboxBackend) -> None:
    stop = StopSignal()
    task = _StopAfter(SurrogateTask(executor), stop, n=5)
    loop, store = _loop(tmp_path, task, trials=8, stop=stop)  # type: ignore[arg-type]
    loop.run()
    paused = store.get_run("run-test")
    assert paused.state is RunState.RUNNING and paused.trials_done == 5
    store.close()

    loop, store = _loop(tmp_path, SurrogateTask(executor), trials=8, create=False)
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 9
    assert [t.index for t in store.trials("run-test")] == list(range(9))
    events = store.events_after("run-test", 0)
    finished = [e.payload["trial"] for e in events if e.kind is EventKind.TRIAL_FINISHED]
    assert finished == list(range(9))
    rerun = [e.payload for e in events if e.kind is EventKind.TRIAL_STARTED
             and e.payload["trial"] == 5]
    assert [p["attempt"] for p in rerun] == [1, 2]
    # Trial 5's proposal was made from the incumbent, both times: the same description.
    proposed = [e.payload for e in events if e.kind is EventKind.TRIAL_PROPOSED]
    assert len(proposed) == 9
    started = [e for e in events if e.kind is EventKind.RUN_STARTED]
    assert [e.payload["resumed"] for e in started] == [False, True]


@pytest.mark.docker
def test_cancel_finishes_the_run_and_does_not_count_the_killed_trial(
        tmp_path: Path, executor: SandboxBackend) -> None:
    stop = StopSignal()
    task = _StopAfter(SurrogateTask(executor), stop, n=3)
    stop_request = stop.request

    def cancel_instead(reason: str, by: str = "") -> None:
        stop_request("cancelled", by)

    stop.request = cancel_instead  # type: ignore[method-assign]
    loop, store = _loop(tmp_path, task, trials=8, stop=stop)  # type: ignore[arg-type]
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.CANCELLED and run.trials_done == 3
    assert [t.finished for t in store.trials("run-test")] == [True, True, True, False]
