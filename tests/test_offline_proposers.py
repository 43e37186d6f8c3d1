"""The offline proposers: true random search over the typed ranges, and Optuna's TPE and
CMA-ES as ask-and-tell proposers driving the real inner loop (real store) on a fast
in-process toy task; plus the renamed `random` kind's error."""

from __future__ import annotations

import argparse
import math
import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.ablation import AblationSpec, run_request
from controller.analysis.runner import plan
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.run import proposer_kind
from controller.errors import FieldError
from controller.llm.settings import LLMAccess
from controller.research.level1 import offline
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.cmaes import CmaEsProposer
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.level1.offline.random_search import RandomSearch
from controller.research.level1.offline.tpe import TPEProposer, distribution
from controller.research.level1.proposer import ProposerContext
from controller.research.level1.protect import SURROGATE, Protected
from controller.research.level1.run_proposer import build_proposer
from controller.research.level1.space import Knob, SearchSpace
from controller.research.level1.typed_points import from_internal, to_internal, trial_configs
from controller.research.settings import (
    Budgets,
    ProposerSettings,
    RunSettings,
    SearchSettings,
)
from controller.research.task import TrialOutcome
from controller.store.artifacts import ArtifactStore
from controller.store.records import TrialRecord, TrialStatus
from controller.store.runs import RunStore
from trainer import knobs
from trainer.knobs import KnobValue

TOY_SPACE = SearchSpace((
    Knob("LR", "float", 1e-4, 1.0, log=True),
    Knob("WIDTH", "int", 8, 512, log=True),
    Knob("BATCH", "int", 16, 4096, power_of_two=True),
    Knob("DROPOUT", "float", 0.0, 0.5),
    Knob("DEPTH", "int", 1, 12),
    Knob("ACT", "choice", choices=("relu", "gelu", "tanh")),
))
TOY_SOURCE = '''"""A toy train.py: its knobs are top-level constants."""
LR = 0.001
WIDTH = 32
BATCH = 64
DROPOUT = 0.3
DEPTH = 2
ACT = "relu"
'''


class ToyTask:
    """A smooth bowl over the toy knobs, scored in-process; a BATCH below 64 crashes (a
    crash region next to the baseline), so crashes reach the optimizers too."""

    name = "toy"
    description = "Lower the toy loss."
    protected: Protected = SURROGATE

    def baseline_source(self) -> str:
        return TOY_SOURCE

    def search_space(self) -> SearchSpace:
        return TOY_SPACE

    def read_knobs(self, source: str) -> dict[str, Any]:
        return knobs.read_knobs(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knobs.write_knobs(source, changes)

    @staticmethod
    def loss(v: dict[str, Any]) -> float:
        return float(
            1.0 + (math.log10(v["LR"] / 0.03)) ** 2 + (math.log2(v["WIDTH"] / 128)) ** 2 / 4
            + (math.log2(v["BATCH"] / 512)) ** 2 / 8 + ((v["DROPOUT"] - 0.1) / 0.2) ** 2
            + ((v["DEPTH"] - 6) / 3) ** 2 + {"relu": 0.2, "gelu": 0.0, "tanh": 0.5}[v["ACT"]])

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        values = knobs.read_knobs(source)
        if values["BATCH"] < 64:
            return TrialOutcome(job_status="error", val_bpb=None, exception={
                "type": "ValueError", "message": "BATCH below 64", "frames": []})
        value = self.loss(values)
        return TrialOutcome(job_status="ok", val_bpb=value, metrics={"val_bpb": value})


def _settings(kind: str, seed: int, trials: int) -> RunSettings:
    return RunSettings(search=SearchSettings(seed=seed), proposer=ProposerSettings(kind=kind),
                       budgets=Budgets(max_trials=trials))


def _loop(folder: Path, kind: str, seed: int, trials: int,
          stop: StopSignal | None = None, create: bool = True) -> tuple[InnerLoop, RunStore]:
    settings = _settings(kind, seed, trials)
    settings.validate()
    store = RunStore(folder / "db.sqlite3")
    if create:
        store.create_run("run-toy", settings.to_dict())
    stop = stop or StopSignal()
    task = ToyTask()
    proposer = build_proposer("run-toy", settings, task, store, LLMAccess(), stop.event)
    return InnerLoop("run-toy", settings, task, proposer, store, ArtifactStore(folder / "a"),
                     stop), store


def _best(folder: Path, kind: str, seed: int, trials: int) -> float:
    loop, store = _loop(folder, kind, seed, trials)
    loop.run()
    best = store.get_run("run-toy").best_val_bpb
    assert best is not None
    return best


# -- random search ---------------------------------------------------------------------

def test_random_search_covers_the_typed_ranges_and_is_reproducible() -> None:
    incumbent = knobs.read_knobs(TOY_SOURCE)
    points = [RandomSearch(7).propose(ProposerContext(i, incumbent, TOY_SPACE, ())).changes
              for i in range(1, 401)]
    for p in points:
        TOY_SPACE.check(p)  # in range, right type, powers of two stay so
        assert set(p) == set(TOY_SPACE.names)  # a full point, not a local move
        assert isinstance(p["WIDTH"], int) and isinstance(p["BATCH"], int)
    # Powers of two: every exponent of [16, 4096], about equally often.
    batches = Counter(p["BATCH"] for p in points)
    assert set(batches) == {2**e for e in range(4, 13)}
    assert min(batches.values()) > 400 / 9 / 2
    # Log scale: half the draws below the geometric middle of the range, not 1/10000.
    lrs = [float(p["LR"]) for p in points]  # type: ignore[arg-type]
    dropouts = [float(p["DROPOUT"]) for p in points]  # type: ignore[arg-type]
    assert 0.4 < sum(v < 1e-2 for v in lrs) / len(points) < 0.6
    assert 0.4 < sum(v < 0.25 for v in dropouts) / len(points) < 0.6
    assert set(p["ACT"] for p in points) == {"relu", "gelu", "tanh"}
    assert set(p["DEPTH"] for p in points) == set(range(1, 13))
    again = RandomSearch(7).propose(ProposerContext(5, incumbent, TOY_SPACE, ()))
    assert again.changes == points[4]
    assert RandomSearch(8).propose(ProposerContext(5, incumbent, TOY_SPACE, ())).changes \
        != points[4]
    assert again.description.endswith("[random_search]")


def test_a_frozen_knob_changes_only_the_trials_that_would_have_moved_it() -> None:
    """Common random numbers per knob name: an arm whose Level 1.5 froze a knob proposes
    what the arm without the freeze proposes on every trial that does not pick it."""
    incumbent = knobs.read_knobs(TOY_SOURCE)
    frozen = TOY_SPACE.without(("LR",))
    for make in (lambda: LocalPerturbation(3, ProposerSettings()), lambda: RandomSearch(3)):
        same = differ = 0
        for i in range(1, 201):
            full = make().propose(ProposerContext(i, incumbent, TOY_SPACE, ())).changes
            part = make().propose(ProposerContext(i, incumbent, frozen, ())).changes
            assert "LR" not in part
            if "LR" in full and len(full) < len(TOY_SPACE.names):
                differ += full != part
                continue
            without_lr = {k: v for k, v in full.items() if k != "LR"}
            assert part == without_lr, (i, full, part)
            same += 1
        assert same > 100  # most trials do not pick the frozen knob, and those agree
    # Another seed still gives other moves.
    a = LocalPerturbation(3, ProposerSettings()).propose(ProposerContext(9, incumbent,
                                                                         TOY_SPACE, ()))
    b = LocalPerturbation(4, ProposerSettings()).propose(ProposerContext(9, incumbent,
                                                                         TOY_SPACE, ()))
    assert a.changes != b.changes


def test_the_renamed_random_kind_says_what_to_use() -> None:
    with pytest.raises(FieldError, match=r"'random' was renamed.*'local'.*'random_search'") as e:
        _settings("random", 0, 1).validate()
    assert e.value.field == "proposer.kind"
    with pytest.raises(FieldError, match="must be one of"):
        _settings("grid", 0, 1).validate()


# -- the typed space in Optuna -----------------------------------------------------------

def test_every_knob_type_maps_to_a_distribution_and_back() -> None:
    samples = {"LR": 0.0125, "WIDTH": 100, "BATCH": 256, "DROPOUT": 0.25, "DEPTH": 3,
               "ACT": "tanh"}
    for knob in TOY_SPACE.knobs:
        dist = distribution(knob)
        inner = to_internal(knob, samples[knob.name])
        assert dist._contains(dist.to_internal_repr(inner))
        assert from_internal(knob, inner) == samples[knob.name]
    batch = TOY_SPACE.get("BATCH")
    assert to_internal(batch, 256) == 8  # the exponent
    assert to_internal(batch, 100) is None  # not a power of two: left out, never guessed
    assert to_internal(TOY_SPACE.get("LR"), 5.0) is None  # outside the range


# -- TPE and CMA-ES in the real loop --------------------------------------------------------

@pytest.mark.parametrize("kind", ["tpe", "cmaes"])
def test_optimizer_is_told_every_trial_and_a_fresh_one_asks_the_same_next_point(
        tmp_path: Path, kind: str) -> None:
    loop, store = _loop(tmp_path, kind, 3, 24)
    loop.run()
    trials = store.trials("run-toy")
    assert len(trials) == 25 and all(t.finished for t in trials)
    assert all(t.description.endswith(f"[{kind}]") for t in trials[1:])
    crashed = [t for t in trials if t.status is TrialStatus.CRASH]
    assert crashed, "the toy task's crash region was visited (so crashes were told)"
    for t in trials:
        TOY_SPACE.check({k: v for k, v in knobs.read_knobs(loop.artifacts.read_trial(
            "run-toy", t.index, "train.py").decode()).items()})
    # The state is rebuilt from the store: the run's proposer and a fresh one (as after
    # a controller restart) propose the same point, told the same trials.
    run = store.get_run("run-toy")
    assert run.best_trial is not None
    best = knobs.read_knobs(loop.artifacts.read_trial("run-toy", run.best_trial,
                                                      "train.py").decode())
    ctx = ProposerContext(25, best, TOY_SPACE, trials)
    baseline = knobs.read_knobs(TOY_SOURCE)
    fresh = TPEProposer(3, baseline) if kind == "tpe" else CmaEsProposer(3, baseline)
    first = loop.proposer.propose(ctx)
    assert fresh.propose(ctx) == first
    assert isinstance(loop.proposer, TPEProposer | CmaEsProposer)
    # TPE is told every trial (a crash as infeasible); CMA-ES its own 24 points, crashes
    # ranked last, in whole generations of 8 (5 numeric knobs: 4 + 3 ln 5).
    assert loop.proposer.told == (25 if kind == "tpe" else 24) == fresh.told
    if isinstance(fresh, CmaEsProposer):
        assert fresh.generation == 3
    other = replace_history(ctx, trials[:-3])
    assert fresh.propose(other) != first  # the history is what it learns from


def replace_history(ctx: ProposerContext, history: Any) -> ProposerContext:
    return ProposerContext(ctx.trial_index, ctx.incumbent, ctx.space, tuple(history))


@pytest.mark.parametrize("kind", ["tpe", "cmaes"])
def test_a_run_stopped_midway_resumes_to_the_same_trials(tmp_path: Path, kind: str) -> None:
    whole, store = _loop(tmp_path / "whole", kind, 5, 16)
    whole.run()
    expected = [(t.description, t.val_bpb) for t in store.trials("run-toy")]
    stop = StopSignal()
    first, store2 = _loop(tmp_path / "cut", kind, 5, 16, stop=stop)
    first.after_trial.append(lambda i: stop.request("shutdown") if i == 7 else None)
    first.run()
    assert sum(t.finished for t in store2.trials("run-toy")) <= 9
    resumed, store3 = _loop(tmp_path / "cut", kind, 5, 16, create=False)
    resumed.run()
    assert [(t.description, t.val_bpb) for t in store3.trials("run-toy")] == expected


def test_tpe_and_cmaes_beat_random_search_on_a_smooth_objective(tmp_path: Path) -> None:
    # 80 trials: CMA-ES needs a few generations (8 points each here) before it pulls
    # ahead; at 40 it is barely better than random search (2.08 against 2.23).
    means = {kind: statistics.mean(_best(tmp_path / f"{kind}{s}", kind, s * 1000, 80)
                                   for s in range(3))
             for kind in ("random_search", "tpe", "cmaes")}
    # Deterministic for these seeds (measured: random 2.08, TPE 1.26, CMA-ES 1.25; the
    # optimum is 1.0); the margin is what makes the claim.
    assert means["tpe"] < means["random_search"] - 0.3, means
    assert means["cmaes"] < means["random_search"] - 0.3, means


# -- the names users type ---------------------------------------------------------------

def test_the_cli_flag_and_the_ablation_arm_point_from_random_to_the_new_names() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"'local'.*'random_search'"):
        proposer_kind("random")
    kinds = [*offline.names(), "llm"]
    assert [proposer_kind(k) for k in kinds] == kinds
    spec = AblationSpec(id="abl-test", task="surrogate", repeats=2, trials=30)
    said: list[str] = []
    armed = [p.name for p in offline.all_proposers() if p.arm]
    assert {"random_search", "tpe", "cmaes"} <= set(armed)
    plan(spec, ["A", *armed], False, said.append)
    # Offline, random search is its own arm (not skipped as "identical to A").
    assert spec.skipped == {} and not said
    assert {a.name: a.proposer for a in spec.arms} == {"A": "local", **{n: n for n in armed}}
    assert run_request(spec, spec.arm("tpe"), 1).proposer.kind == rpb.PROPOSER_KIND_TPE
    with pytest.raises(ValueError, match="now 'random_search'"):
        plan(AblationSpec(id="abl-test", task="surrogate", repeats=1, trials=1), ["random"],
             False, said.append)


def test_trial_configs_follow_the_parent_chain_and_restore_tuple_choices() -> None:
    history = [TrialRecord("r", 0, True, 1, "baseline", {}),
               TrialRecord("r", 1, True, 1, "a", {"LR": 0.1}, parent=0),
               TrialRecord("r", 2, True, 1, "b", {"SHAPE": [3, 4]}, parent=1),
               TrialRecord("r", 3, True, 1, "c", {"LR": 0.2}, parent=7)]  # unknown parent
    configs = trial_configs(history, {"LR": 0.01, "SHAPE": (1, 2)})
    assert configs == {0: {"LR": 0.01, "SHAPE": (1, 2)}, 1: {"LR": 0.1, "SHAPE": (1, 2)},
                       2: {"LR": 0.1, "SHAPE": (3, 4)}}
    shape = Knob("SHAPE", "choice", choices=((1, 2), (3, 4)))
    assert to_internal(shape, configs[2]["SHAPE"]) == 1
