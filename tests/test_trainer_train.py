"""train.py on the host (direct mode): budget, reproducibility, fail-fast divergence.
How far past its budget a run goes and how long its start-up takes are timings of this
host: bench/trainer_throughput.py reports them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from controller.research.level1.evaluation import SAME_RUN_TOLERANCE
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer import harness
from trainer.data import PreparedData
from trainer.direct import run_direct
from trainer.knobs import write_knobs
from trainer.presets import PRESETS

PRESET = PRESETS["cpu-tiny"]


def tiny_source(**knobs: object) -> str:
    return write_knobs(PRESET.train_source(), knobs)


class SteppedTime:
    """Time for TrainingClock that moves only inside steps: each step (from its
    start_step to its end_step, which both synchronize first) takes the next of
    `seconds`."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds, self.now, self.in_step = list(seconds), 0.0, False

    def synchronize(self, _device: torch.device) -> None:
        if self.in_step:
            self.now += self.seconds.pop(0)
        self.in_step = not self.in_step

    def perf_counter(self) -> float:
        return self.now


def _steps_until_done(clock: harness.TrainingClock) -> int:
    while not clock.done():
        clock.start_step()
        clock.end_step()
    return clock.steps


def test_the_clock_stops_at_the_first_step_that_ends_past_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def stepping(seconds: list[float]) -> None:
        fake = SteppedTime(seconds)
        monkeypatch.setattr(harness, "synchronize", fake.synchronize)
        monkeypatch.setattr(harness, "time", SimpleNamespace(perf_counter=fake.perf_counter))

    stepping([9.0, 9.0] + [0.7] * 20)
    clock = harness.TrainingClock(3.0, 2, torch.device("cpu"))
    # The two warm-up steps do not count; 0.7 s steps reach 3.0 s at the fifth: 3.5 s.
    assert _steps_until_done(clock) == 2 + 5
    assert clock.training_seconds == pytest.approx(3.5) and clock.progress() == 1.0
    stepping([0.7] * 20)
    assert _steps_until_done(harness.TrainingClock(300.0, 0, torch.device("cpu"),
                                                   max_steps=4)) == 4


def test_time_budget_is_respected(tiny_data: PreparedData, tmp_path: Path) -> None:  # noqa: F811
    outcome = run_direct(tiny_source(TIME_BUDGET_SECONDS=3.0), PRESET, tiny_data, tmp_path)
    assert outcome.ok, outcome.error
    # It trained the whole budget (MAX_STEPS is 0: the budget is what stopped it; where
    # the clock stops is tested above without the host's timing).
    assert outcome.metrics["training_seconds"] >= 3.0
    assert isinstance(outcome.metrics["val_bpb"], float)


@pytest.mark.slow
def test_same_seed_gives_the_same_val_bpb_on_cpu(tiny_data: PreparedData,  # noqa: F811
                                                 tmp_path: Path) -> None:
    source = tiny_source(MAX_STEPS=3, TIME_BUDGET_SECONDS=600.0)
    first = run_direct(source, PRESET, tiny_data, tmp_path / "a")
    second = run_direct(source, PRESET, tiny_data, tmp_path / "b")
    assert first.ok and second.ok, (first.error, second.error)
    assert first.metrics["num_steps"] == second.metrics["num_steps"] == 3
    # CPU kernels may pick other SIMD paths for differently aligned buffers, which moves
    # the last float digits (seen: 4.9328803594 vs 4.9328804749, and 4.9328803594 vs
    # 4.9328824039); the seed check's tolerance is still 30x below val_bpb's noise
    # floor of ~3e-4.
    assert first.metrics["val_bpb"] == pytest.approx(second.metrics["val_bpb"],
                                                     abs=SAME_RUN_TOLERANCE)


def test_diverging_loss_fails_fast_with_a_clear_message(tiny_data: PreparedData,  # noqa: F811
                                                        tmp_path: Path) -> None:
    outcome = run_direct(tiny_source(MAX_LOSS=0.5), PRESET, tiny_data, tmp_path)
    assert not outcome.ok
    assert "TrainingDiverged" in outcome.train.stderr
    assert "lower the learning rates" in outcome.train.stderr
    assert outcome.eval is None
