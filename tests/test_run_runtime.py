"""A run chooses its sandbox runtime: its trials run under gVisor when it asks for runsc."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from controller.api import enums
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from tests.test_api_harness import Stubs, field_violations, serving

pytestmark = pytest.mark.docker

SURROGATE = Path(__file__).resolve().parents[1] / "trainer" / "surrogate.py"


def _kernel_reporting_baseline() -> bytes:
    """The surrogate, also printing the kernel its job sees (gVisor reports 4.4.0)."""
    return SURROGATE.read_bytes() + b"\nimport os\nprint('kernel', os.uname().release)\n"


@pytest.mark.parametrize(("runtime", "gvisor"), [("runsc", True), ("runc", False)])
def test_trials_run_under_the_runtime_the_run_asks_for(tmp_path: Path, sandbox_image: str,
                                                       runtime: str, gvisor: bool) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        run = stubs.runs.CreateRun(rpb.CreateRunRequest(
            task=rpb.TaskSpec(preset="surrogate", train_py=_kernel_reporting_baseline(),
                              runtime=enums.to_enum(enums.RUNTIMES, runtime)),
            budgets=rpb.Budgets(max_trials=1)), timeout=30)
        list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=120))
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        assert final.state == rpb.RUN_STATE_SUCCEEDED
        assert final.request.task.runtime == enums.RUNTIMES[runtime]
        for trial in (0, 1):
            log = stubs.runs.GetArtifact(rpb.GetArtifactRequest(
                run_id=run.id, name=f"trials/{trial}/log")).content.decode()
            assert ("kernel 4.4.0" in log) is gvisor, log


def test_unknown_runtime_is_invalid_argument_naming_the_field(tmp_path: Path,
                                                              sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.CreateRun(rpb.CreateRunRequest(
                task=rpb.TaskSpec(preset="surrogate", runtime=cast(Any, 99)),  # no such Runtime
                budgets=rpb.Budgets(max_trials=1)), timeout=30)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "task.runtime" in field_violations(info.value)
