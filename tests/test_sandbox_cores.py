"""Time-budgeted jobs never share cores (controller/sandbox/cores.py, issue 19 #4): the
gate's arithmetic and order as pure logic, and three concurrent training phases through
the real executor and the trainer task's run_in_sandbox on a gate of two cores running
one at a time."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from controller.research.settings import TaskSettings
from controller.research.tasks.trainer import TrainerTask
from controller.research.tasks.trainer_run import run_in_sandbox
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.cores import CoreGate, host_cores, quota_cores
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.spec import Status
from tests.test_loop_harness import SyntheticTask, make_loop, run_settings
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer.data import PreparedData
from trainer.presets import PRESETS

PRESET = PRESETS["cpu-tiny"]


def test_the_cgroup_quota_is_read_in_cores() -> None:
    assert quota_cores("200000 100000") == 2.0
    assert quota_cores("150000 100000") == 1.5
    assert quota_cores("max 100000") is None
    assert quota_cores(None, "100000", "100000") == 1.0
    assert quota_cores(None, "-1", "100000") is None
    assert quota_cores() is None
    assert host_cores(engine_cpus=1) == 1.0  # the engine's count bounds it too
    assert host_cores() >= 1.0


def test_the_plan_says_how_many_run_at_once() -> None:
    gate = CoreGate(2)
    assert gate.at_once(2.0) == 1 and gate.at_once(1.0) == 2 and gate.at_once(8.0) == 1
    assert gate.plan(2, 1.0) == ""
    assert gate.plan(3, 2.0) == ("3 trials asked to run at once; this host has 2 cores and "
                                 "each takes 2: running 1 at a time")
    assert gate.share(8.0) == 2.0  # asking more than the host has: the whole host, alone
    with pytest.raises(ValueError, match="at least one core"):
        CoreGate(0)


def test_the_gate_admits_in_arrival_order_and_a_cancel_stops_waiting() -> None:
    gate = CoreGate(2)
    order: list[str] = []
    first = gate.hold(2.0)
    assert first.__enter__() is True
    queued = threading.Event()

    def wait(name: str, cancel: threading.Event | None = None) -> None:
        with gate.hold(1.0, cancel) as held:
            order.append(f"{name}:{held}")

    cancel = threading.Event()
    threads = [threading.Thread(target=wait, args=("a",)),
               threading.Thread(target=wait, args=("b", cancel))]
    for t in threads:
        t.start()
        while gate.waiting < threads.index(t) + 1:  # queued in this order
            queued.wait(0.01)
    cancel.set()
    threads[1].join()
    assert order == ["b:False"] and gate.free == 0.0  # cancelled while waiting: holds none
    first.__exit__(None, None, None)
    threads[0].join()
    assert order == ["b:False", "a:True"] and gate.free == 2.0


STAMP = """import time
print("start", repr(time.time()), flush=True)
time.sleep(1.0)
print("end", repr(time.time()), flush=True)
"""


@pytest.mark.docker
def test_three_time_budgeted_submissions_on_a_two_core_host_run_one_at_a_time(
        sandbox_image: str, tiny_data: PreparedData) -> None:  # noqa: F811
    executor = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=3,
                                              namespace="pytest"))
    executor.cores = CoreGate(2)  # this host, as far as the gate knows, has two cores
    try:
        assert PRESET.train_limits.cpus == 2.0
        note = TrainerTask(TaskSettings(preset="cpu-tiny"), executor).parallel_note(3)
        assert note == ("3 trials asked to run at once; this host has 2 cores and each "
                        "takes 2: running 1 at a time")
        def submit() -> tuple[float, float]:
            outcome = run_in_sandbox(executor, STAMP, PRESET, tiny_data)
            assert outcome.train.status is Status.OK, outcome.error  # no model: no eval
            stamps = dict(line.split() for line in outcome.train.stdout.splitlines()
                          if line.startswith(("start", "end")))
            return float(stamps["start"]), float(stamps["end"])

        with ThreadPoolExecutor(3) as pool:
            results = [f.result() for f in [pool.submit(submit) for _ in range(3)]]
        spans = sorted(results)
        assert len(spans) == 3
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, spans  # each started after the one before had ended
    finally:
        executor.close()


@dataclass
class _Timed(SyntheticTask):
    """The synthetic task, time-budgeted on a two-core host whose jobs take 2 cores."""

    def parallel_note(self, trials: int) -> str:
        return CoreGate(2).plan(trials, 2.0)


def test_a_run_whose_batch_asks_for_more_than_the_cores_says_so_once(tmp_path: Path) -> None:
    parts = make_loop(tmp_path, _Timed(), run_settings(4, batch_size=3), use_memory=False)
    with structlog.testing.capture_logs() as logs:
        parts.loop.run()
    notes = [e for e in logs if "asked to run at once" in e["event"]]
    assert [e["event"] for e in notes] == [
        "3 trials asked to run at once; this host has 2 cores and each takes 2: running 1 "
        "at a time"] and notes[0]["log_level"] == "warning"
