"""Slot utilization of the Level-1 loop: the fraction of slot-time spent training,
sequential (Karpathy's loop: propose, then train) vs pipelined vs batched+pipelined.

The LLM is the scripted fake server answered through the real Anthropic SDK with a fixed
latency; a trial is a fixed-length in-process job holding one of the slots (this
measures the loop's scheduling, not Docker). Karpathy's loop spends ~92 % of its wall
time training (300 s of 326 s); the target here is >= 97 %.

Utilization = sum of trial run time / (batch size x wall time), over the search (from the
end of the baseline to the last trial's end; the first proposal's latency included).

Usage: python bench/loop_utilization.py [--trials 8] [--trial-seconds 4]
           [--llm-latency 0.3] [--slots 2] [--json out.json]
(300 s trials and 20 s answers scale to 4 s and 0.27 s; the default run takes ~1.5 min.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake LLM server

from controller.llm.settings import LLMAccess, LLMSettings
from controller.logging import configure_logging
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.protect import SURROGATE
from controller.research.level1.run_proposer import build_proposer
from controller.research.level1.space import SearchSpace
from controller.research.settings import Budgets, ProposerSettings, RunSettings, SearchSettings
from controller.research.task import TrialOutcome
from controller.research.tasks.surrogate import SOURCE, SPACE
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore
from tests.fake_llm_server import FakeLLMServer, RecordedRequest, Reply, Script
from trainer import knobs
from trainer.knobs import KnobValue

MODES = {"sequential": (1, False), "pipelined": (1, True), "batched+pipelined": (0, True)}


class FixedLengthTask:
    """Every evaluation holds a slot for exactly `seconds`; val_bpb depends on the knobs."""

    name = "fixed-length"
    description = "Lower val_bpb of a small GPT (benchmark task)."
    protected = SURROGATE

    def __init__(self, seconds: float, slots: int) -> None:
        self.seconds = seconds
        self._slots = threading.BoundedSemaphore(slots)

    def baseline_source(self) -> str:
        return SOURCE.read_text()

    def search_space(self) -> SearchSpace:
        return SPACE

    def read_knobs(self, source: str) -> dict[str, Any]:
        return knobs.read_knobs(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knobs.write_knobs(source, changes)

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        with self._slots:
            cancel.wait(self.seconds)
        lr = float(knobs.read_knobs(source)["MATRIX_LR"])
        value = 1.0 + (lr - 0.08) ** 2 + random.Random(f"{seed}:{lr}").gauss(0, 3e-4)
        return TrialOutcome(job_status="ok", val_bpb=value, seconds=self.seconds)


def _answer(request: RecordedRequest) -> Script:
    lr = round(random.uniform(0.02, 0.2), 4)
    return Reply(json.dumps({"changes": {"MATRIX_LR": lr}, "hypothesis": f"MATRIX_LR {lr}"}))


def measure(mode: str, trials: int, trial_seconds: float, latency: float, slots: int,
            workdir: Path) -> dict[str, Any]:
    batch, pipeline = MODES[mode]
    batch = batch or slots
    with FakeLLMServer(responder=_answer, latency=latency) as server:
        settings = RunSettings(
            search=SearchSettings(batch_size=batch, pipeline=pipeline),
            proposer=ProposerSettings(kind="llm", use_memory=False),
            budgets=Budgets(max_trials=trials),
            llm=LLMSettings(base_url=server.anthropic_url, max_attempts=2))
        store = RunStore(workdir / mode / "db.sqlite3")
        store.create_run("bench", settings.to_dict())
        stop = StopSignal()
        task = FixedLengthTask(trial_seconds, slots)
        proposer = build_proposer("bench", settings, task, store,
                                  LLMAccess().allowing(server.anthropic_url), stop.event)
        InnerLoop("bench", settings, task, proposer, store,
                  ArtifactStore(workdir / mode / "runs"), stop).run()
        rows = store.trials("bench")
        store.close()
    search = rows[1:]
    start, end = rows[0].ended_at, max(t.ended_at for t in search)
    training = sum(t.ended_at - t.started_at for t in search)
    return {"mode": mode, "batch": batch, "trials": len(search),
            "search_seconds": round(end - start, 2),
            "training_seconds": round(training, 2),
            "utilization": round(training / (batch * (end - start)), 4),
            "llm_calls": len(server.requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--trial-seconds", type=float, default=4.0)
    parser.add_argument("--llm-latency", type=float, default=0.3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    configure_logging("console", "warning")
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench-fake-key")  # sent to 127.0.0.1 only
    print(f"trials {args.trials} x {args.trial_seconds:g} s, LLM latency "
          f"{args.llm_latency:g} s, {args.slots} slots")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            result = measure(mode, args.trials, args.trial_seconds, args.llm_latency,
                             args.slots, Path(tmp))
            results.append(result)
            print(f"{mode:<18} batch {result['batch']}  search {result['search_seconds']:7.2f} s"
                  f"  training {result['training_seconds']:7.2f} s  utilization "
                  f"{100 * result['utilization']:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
