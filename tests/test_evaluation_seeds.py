"""The baseline's noise seeds run one at a time unless the task's value cannot depend on
timing: a time-budgeted trainer sharing a CPU host's cores with its own other seeds gets
fewer steps, and the noise sigma would measure the slot schedule (evaluation.py)."""

from __future__ import annotations

import threading
import time

from controller.research.level1 import evaluation
from controller.research.task import TrialOutcome
from controller.research.tasks.surrogate import SurrogateTask


class Overlap(SurrogateTask):
    """The real in-process surrogate, counting how many evaluations run at once."""

    def __init__(self, parallel: bool, meet: threading.Barrier | None = None) -> None:
        super().__init__(None)
        self.seeds_in_parallel = parallel
        self.meet = meet
        self.lock = threading.Lock()
        self.active = self.most = 0

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            if self.meet is not None:
                self.meet.wait()  # only returns when two evaluations are in here at once
            time.sleep(0.01)  # room for an overlap, were there one
            return super().evaluate(source, seed, cancel)
        finally:
            with self.lock:
                self.active -= 1


def test_a_timing_sensitive_task_runs_its_baseline_seeds_one_at_a_time() -> None:
    task = Overlap(parallel=False)
    result = evaluation.evaluate(task, task.baseline_source(), list(range(8)),
                                 threading.Event())
    assert result is not None and len(result.values) == 8 and task.most == 1
    assert len(set(result.values)) == 8  # eight seeds, eight noise draws


def test_a_task_whose_value_ignores_timing_runs_them_at_once() -> None:
    assert SurrogateTask(None).seeds_in_parallel
    task = Overlap(parallel=True, meet=threading.Barrier(2, timeout=30))
    result = evaluation.evaluate(task, task.baseline_source(), [1, 2], threading.Event())
    assert result is not None and len(result.values) == 2 and task.most == 2
