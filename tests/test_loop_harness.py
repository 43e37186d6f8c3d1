"""Helpers for the inner-loop tests: a synthetic in-process task with known truth and
noise, loops wired to the real LLM stack against the fake LLM server, and answer
generators. Plus the tests of the synthetic task itself."""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.llm.settings import LLMAccess, LLMSettings
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.proposer import Proposer
from controller.research.level1.protect import SURROGATE, Protected
from controller.research.level1.run_proposer import build_proposer
from controller.research.level1.space import SearchSpace
from controller.research.settings import (
    Budgets,
    ProposerSettings,
    RunSettings,
    SearchSettings,
)
from controller.research.task import TrialOutcome
from controller.research.tasks.surrogate import SOURCE, SPACE
from controller.store.artifacts import ArtifactStore
from controller.store.memory import MemoryStore
from controller.store.runs import RunStore
from tests.fake_llm_server import RecordedRequest, Reply, Script
from trainer import knobs
from trainer.knobs import KnobValue

SIGMA = 3e-4
TEST_KEY = "sk-test-not-a-real-key-0123456789"
TOP_LEVEL_RAISE = re.compile(r"^raise (\w+)\((.*)\)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Evaluated:
    source: str
    seed: int
    start: float
    end: float


@dataclass
class SyntheticTask:
    """The surrogate's train.py and knobs, evaluated in-process from the knob values:
    val_bpb = truth(knobs) + gauss(0, sigma) seeded by (seed, knobs). WARMUP_RATIO has no
    effect (a pure-noise knob); DEPTH above `crash_depth` "runs out of memory"; a
    top-level `raise X("...")` in train.py crashes with that error. Evaluations hold one
    of `slots` and take `trial_seconds`."""

    sigma: float = SIGMA
    trial_seconds: float = 0.0
    slots: int = 8
    crash_depth: int = 14
    name: str = "synthetic"
    description: str = "Lower val_bpb of a small GPT (a synthetic test task)."
    protected: Protected = SURROGATE
    evaluated: list[Evaluated] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()

    def baseline_source(self) -> str:
        return SOURCE.read_text()

    def search_space(self) -> SearchSpace:
        return SPACE

    def read_knobs(self, source: str) -> dict[str, Any]:
        return knobs.read_knobs(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knobs.write_knobs(source, changes)

    @staticmethod
    def truth(values: dict[str, Any]) -> float:
        return float(1.0 + 0.01 * (math.log(values["MATRIX_LR"] / 0.08) / 0.5) ** 2
                     + 0.0005 * (values["DEPTH"] - 10) ** 2)

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        with self._slots:
            start = time.time()
            deadline = time.monotonic() + self.trial_seconds
            while time.monotonic() < deadline and not cancel.is_set():
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            end = time.time()
        with self._lock:
            self.evaluated.append(Evaluated(source, seed, start, end))
        if cancel.is_set():
            return TrialOutcome(job_status="killed", val_bpb=None)
        raised = TOP_LEVEL_RAISE.search(source)
        values = knobs.read_knobs(source)
        if raised or values["DEPTH"] > self.crash_depth:
            kind, message = (raised.group(1), raised.group(2).strip("'\"")) if raised else (
                "MemoryError", "CUDA out of memory")
            return TrialOutcome(job_status="error", val_bpb=None, exception={
                "type": kind, "message": message, "frames": [
                    {"filename": "train.py", "lineno": 1, "name": "<module>", "line": ""}]},
                log=f"Traceback (most recent call last):\n{kind}: {message}\n")
        noise = random.Random(f"{seed}:{sorted(values.items())!r}").gauss(0.0, self.sigma)
        value = self.truth(values) + noise
        return TrialOutcome(job_status="ok", val_bpb=value, metrics={"val_bpb": value},
                            log=f"val_bpb: {value:.6f}\n", seconds=end - start)


def llm_settings(server_url: str, provider: str = "anthropic", **kw: Any) -> LLMSettings:
    model = "deepseek-chat" if provider == "openai" else ""
    return LLMSettings(provider=provider, model=model, base_url=server_url,
                       timeout_seconds=kw.pop("timeout_seconds", 5.0),
                       max_attempts=kw.pop("max_attempts", 3),
                       backoff_seconds=kw.pop("backoff_seconds", 0.01), **kw)


def run_settings(trials: int, llm: LLMSettings | None = None, **search: Any) -> RunSettings:
    proposer: dict[str, Any] = search.pop("proposer", {})
    budgets: dict[str, Any] = search.pop("budgets", {})
    kind = "llm" if llm is not None else "local"
    return RunSettings(search=SearchSettings(**search),
                       proposer=ProposerSettings(kind=kind, **proposer),
                       budgets=Budgets(max_trials=trials, **budgets),
                       llm=llm or LLMSettings())


@dataclass
class LoopParts:
    loop: InnerLoop
    store: RunStore
    artifacts: ArtifactStore
    memory: MemoryStore


def make_loop(tmp_path: Path, task: SyntheticTask, settings: RunSettings,
              run_id: str = "run-test", create: bool = True,
              proposer: Proposer | None = None, use_memory: bool = True,
              stop: StopSignal | None = None, store: RunStore | None = None) -> LoopParts:
    """A loop on the real store and, for LLM settings, the real provider stack."""
    store = store or RunStore(tmp_path / "db.sqlite3")
    artifacts = ArtifactStore(tmp_path / "runs")
    if create:
        store.create_run(run_id, settings.to_dict())
    stop = stop or StopSignal()
    memory = MemoryStore(store)
    if proposer is None:
        proposer = build_proposer(run_id, settings, task, store,
                                  LLMAccess().allowing(settings.llm.base_url), stop.event)
    lessons = [m.text for m in memory.list(task.name)] if use_memory else []
    loop = InnerLoop(run_id, settings, task, proposer, store, artifacts,
                     stop, lessons=lessons, memory=memory)
    return LoopParts(loop, store, artifacts, memory)


def params_answer(changes: dict[str, Any], hypothesis: str = "a test hypothesis") -> str:
    return json.dumps({"changes": changes, "hypothesis": hypothesis})


def code_answer(search: str, replace: str, hypothesis: str = "a code change") -> str:
    return (f"HYPOTHESIS: {hypothesis}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n"
            ">>>>>>> REPLACE\n")


def random_params_responder(seed: int = 0) -> Callable[[RecordedRequest], Script]:
    """Valid params answers: a fresh MATRIX_LR (and sometimes DEPTH) each time."""
    counter = iter(range(10**9))

    def answer(request: RecordedRequest) -> Script:
        rng = random.Random(f"{seed}:{next(counter)}")
        changes: dict[str, Any] = {"MATRIX_LR": round(rng.uniform(0.02, 0.2), 4)}
        if rng.random() < 0.3:
            changes["DEPTH"] = rng.randint(6, 12)
        return Reply(params_answer(changes, f"try MATRIX_LR {changes['MATRIX_LR']}"))

    return answer


def test_synthetic_task_is_deterministic_and_noisy() -> None:
    task = SyntheticTask()
    source = task.baseline_source()
    never = threading.Event()
    a, b = task.evaluate(source, 0, never), task.evaluate(source, 0, never)
    c = task.evaluate(source, 1, never)
    assert a.val_bpb == b.val_bpb and a.val_bpb != c.val_bpb
    assert a.val_bpb is not None and abs(a.val_bpb - task.truth(task.read_knobs(source))) < 0.01
    crashed = task.evaluate(source + "raise RuntimeError('boom')\n", 0, never)
    assert crashed.crashed and crashed.exception and crashed.exception["type"] == "RuntimeError"
