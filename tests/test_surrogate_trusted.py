"""Issue 11, finding 3: the surrogate's val_bpb is computed by the controller from the
knobs of the candidate's file, so what the job computes (or forges) does not count, and
code mode is refused on the surrogate with an error naming the field."""

from __future__ import annotations

import threading

import pytest

from controller.errors import FieldError
from controller.research.settings import TaskSettings
from controller.research.tasks.registry import make_task
from controller.research.tasks.surrogate import SOURCE, SurrogateTask
from controller.sandbox.backend import SandboxBackend
from tests.conftest import RUNTIMES

BASELINE = SOURCE.read_text()
# The edit: the job's own noise draw returns -0.5, so it reports ~0.48, not ~0.98.
FORGED = BASELINE.replace(
    "def main():", "random.Random.gauss = lambda self, mu, sigma: -0.5\n\n\ndef main():", 1)


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_a_forged_surrogate_metric_does_not_count(executor: SandboxBackend,
                                                       runtime: str) -> None:
    assert FORGED != BASELINE
    task = SurrogateTask(executor, runtime=runtime)
    honest = task.evaluate(BASELINE, 3, threading.Event())
    forged = task.evaluate(FORGED, 3, threading.Event())
    assert not forged.crashed and forged.val_bpb is not None
    assert "val_bpb:          0.4" in forged.log  # the job did forge its own number...
    assert forged.val_bpb == honest.val_bpb == task.value(BASELINE, 3)[0]  # ...ignored
    assert 0.95 < forged.val_bpb < 1.0


@pytest.mark.docker
def test_a_crash_in_the_sandbox_is_still_the_trials_crash(executor: SandboxBackend) -> None:
    crashing = BASELINE.replace("def main():", "def main():\n    raise RuntimeError('boom')", 1)
    outcome = SurrogateTask(executor).evaluate(crashing, 0, threading.Event())
    assert outcome.crashed and outcome.exception is not None
    assert outcome.exception["type"] == "RuntimeError"


def test_code_mode_is_refused_on_the_surrogate_naming_the_field() -> None:
    with pytest.raises(FieldError) as refused:
        make_task(TaskSettings(preset="surrogate"), None, "code")  # type: ignore[arg-type]
    assert refused.value.field == "proposer.mode"
    assert isinstance(make_task(TaskSettings(preset="surrogate"), None,  # type: ignore[arg-type]
                                "params"), SurrogateTask)


def test_in_process_trials_run_no_candidate_code_and_model_the_oom() -> None:
    task = SurrogateTask(None)
    outcome = task.evaluate(FORGED + "\nraise SystemExit(3)\n", 5, threading.Event())
    assert outcome.val_bpb == task.value(BASELINE, 5)[0] and not outcome.crashed
    assert task.evaluate(BASELINE, 6, threading.Event()).val_bpb != outcome.val_bpb  # seeded
    huge = task.apply(BASELINE, {"DEPTH": 16, "ASPECT_RATIO": 128})
    oom = task.evaluate(huge, 5, threading.Event())
    assert oom.crashed and oom.exception is not None and oom.exception["type"] == "MemoryError"
    missing = task.evaluate(BASELINE.replace("DEPTH = 8", "DEPTH = int('8')"), 5,
                            threading.Event())
    assert missing.crashed and "DEPTH" in missing.exception["message"]  # type: ignore[index]
