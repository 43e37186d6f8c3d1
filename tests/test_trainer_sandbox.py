"""End to end in the Docker sandbox: train, then the trusted evaluation in its own job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.research.tasks.trainer_run import run_in_sandbox
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer.data import PreparedData
from trainer.direct import run_direct
from trainer.knobs import write_knobs
from trainer.presets import PRESETS

pytestmark = pytest.mark.docker
PRESET = PRESETS["cpu-tiny"]

FORGER_HEAD = '''
import json, os
print("VAL_VISIBLE", os.path.exists("/data/val"), sorted(os.listdir("/data")))
'''
FORGER_TAIL = '''
print("val_bpb:          0.000001")
with open(os.environ["BILEVEL_METRICS"], "w") as handle:
    json.dump({"val_bpb": 1e-6, "eval_seconds": 0.0}, handle)
with open("/job/out/eval.json", "w") as handle:
    json.dump({"val_bpb": 1e-6}, handle)
'''


@pytest.fixture(scope="module")
def executor() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # no engine: these tests cannot run here
        pytest.skip(f"Docker engine not reachable: {exc}")
    from controller.sandbox.executor import DockerExecutor
    from controller.sandbox.image import ensure_image

    ensure_image(client)
    executor = DockerExecutor()
    yield executor
    executor.close()


@pytest.mark.slow
def test_cpu_tiny_trains_in_the_sandbox_and_beats_the_untrained_model(
        executor: Any, tiny_data: PreparedData, tmp_path: Path) -> None:  # noqa: F811
    outcome = run_in_sandbox(executor, PRESET.train_source(), PRESET, tiny_data)
    assert outcome.ok, (outcome.error, outcome.train.stderr[-3000:])
    untrained = run_direct(write_knobs(PRESET.train_source(), {"TIME_BUDGET_SECONDS": 0.0}),
                           PRESET, tiny_data, tmp_path)
    assert untrained.ok, untrained.error
    assert untrained.metrics["num_steps"] == 0
    assert outcome.metrics["val_bpb"] < 0.6 * untrained.metrics["val_bpb"]
    assert outcome.metrics["training_seconds"] >= PRESET.knobs["TIME_BUDGET_SECONDS"]
    assert outcome.metrics["probe_max_diff"] <= 1e-3
    assert "val_bpb:" in outcome.summary()


@pytest.mark.slow
def test_deny_candidate_reading_validation_or_forging_the_metric(
        executor: Any, tiny_data: PreparedData) -> None:  # noqa: F811
    source = write_knobs(PRESET.train_source(), {"TIME_BUDGET_SECONDS": 2.0})
    source = source.replace("import torch\n", "import torch\n" + FORGER_HEAD, 1) + FORGER_TAIL
    outcome = run_in_sandbox(executor, source, PRESET, tiny_data)
    assert outcome.ok, (outcome.error, outcome.train.stderr[-3000:])
    assert "VAL_VISIBLE False ['train']" in outcome.train.stdout
    assert "val_bpb:          0.000001" in outcome.train.stdout  # it printed its forgery...
    assert outcome.train.metrics["val_bpb"] == 1e-6  # ...and wrote it as its metrics
    assert outcome.metrics["val_bpb"] > 1.0  # but the recorded value is the evaluator's
    assert outcome.metrics["val_bpb"] == outcome.eval.metrics["val_bpb"]


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_broken_candidate_returns_its_traceback(executor: Any, runtime: str,
                                                tiny_data: PreparedData) -> None:  # noqa: F811
    source = PRESET.train_source().replace(
        "torch.manual_seed(SEED)\n", "torch.manual_seed(SEED)\nwidth = UNDEFINED_KNOB * 2\n", 1)
    outcome = run_in_sandbox(executor, source, PRESET, tiny_data, runtime=runtime)
    assert not outcome.ok and outcome.eval is None
    assert outcome.train.status.value == "error"
    assert outcome.train.exception.type == "NameError"
    assert outcome.train.exception.frames[-1].filename.endswith("train.py")
    assert "UNDEFINED_KNOB" in outcome.error
    assert outcome.metrics["val_bpb"] is None
