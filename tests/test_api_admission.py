"""Admission before work (issue 19, part 5): concurrent CreateRun calls never start more
runs than server.max_runs, and a large Execute body over capacity is refused before the
controller reads it. Real servers on loopback, real Docker for the jobs and runs.

The memory tests run the controller in a subprocess and read its peak RSS (VmHWM) from
/proc, so the client's own buffers do not count (as tests/test_api_edge.py does).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from controller.api.admission import DECLARED_BYTES
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.research.manager import RunManager, _Place
from tests.test_api_edge import peak_rss_mib
from tests.test_api_harness import Stubs, serving, wait_for_engine
from tests.test_api_streams import quota_subject

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[1]
EXECUTE = "/bilevel.v1.SandboxService/Execute"
CREATES = 10


def long_run() -> rpb.CreateRunRequest:
    """The surrogate scored in process: cheap, and busy far longer than the test."""
    return rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate", in_process=True),
                                budgets=rpb.Budgets(max_trials=100000))


def create_concurrently(address: str) -> tuple[list[rpb.Run], list[grpc.RpcError]]:
    stubs = Stubs(address)

    def create(_: int) -> rpb.Run | grpc.RpcError:
        try:
            return stubs.runs.CreateRun(long_run(), timeout=120)
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(CREATES) as pool:
        outcomes = list(pool.map(create, range(CREATES)))
    runs = [o for o in outcomes if isinstance(o, rpb.Run)]
    for run in runs:
        stubs.runs.CancelRun(rpb.CancelRunRequest(run_id=run.id), timeout=120)
    return runs, [o for o in outcomes if isinstance(o, grpc.RpcError)]


def test_deny_concurrent_create_runs_start_more_than_max_runs(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image, max_active_runs=4) as server:
        wait_for_engine(Stubs(server.address))
        runs, refused = create_concurrently(server.address)
    assert [r.state for r in runs] == [rpb.RUN_STATE_RUNNING] * 4
    assert len(refused) == CREATES - 4
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {quota_subject(e) for e in refused} == {"server.max_runs"}
    assert "4 of the 4 runs" in (refused[0].details() or "")


class CheckThenStart(RunManager):
    """max_runs checked, but the place not held while the run starts (the check and the
    start apart); every create passes the check before any starts."""

    barrier = threading.Barrier(CREATES, timeout=60)

    def _reserve(self, owner: str, stored_bytes: int = 0) -> _Place:
        place = super()._reserve(owner, stored_bytes)
        self._release(place)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return place


class RacyServer(ControllerServer):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.manager = CheckThenStart(self.store, self.artifacts, self.engine,
                                      self.manager.config)


def test_sensitivity_check_apart_from_start_lets_every_create_run(
        tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image, factory=RacyServer, max_active_runs=4) as server:
        wait_for_engine(Stubs(server.address))
        runs, refused = create_concurrently(server.address)
    assert len(runs) == CREATES and refused == []


# Large bodies: a controller in a subprocess, one job holding the capacity.

SERVER = textwrap.dedent("""
    import asyncio, sys
    from dataclasses import replace
    from pathlib import Path
    from controller.api.admission import ByteBudget, StreamBudget
    from controller.api.edge import EdgeInterceptor
    from controller.api.server import ControllerServer
    from controller.config import ServerConfig
    from controller.sandbox.backend_config import ExecutorConfig

    class Ungated(ControllerServer):  # Execute places are not checked before the read
        def edge(self, admission):
            c = self.config
            return EdgeInterceptor(self.auth, StreamBudget(c.max_streams, 99),
                                   ByteBudget(c.max_request_bytes_in_flight), {})

    state, image, variant, budget, queue = sys.argv[1:6]
    async def main():
        config = ServerConfig(state_dir=Path(state),
                              executor=ExecutorConfig(image=image, slots=1,
                                                      namespace="pytest-admission"),
                              execute_queue=int(queue),
                              max_request_bytes_in_flight=int(budget))
        server = (Ungated if variant == "ungated" else ControllerServer)(config)
        await server.start()
        print("ADDRESS", server.socket.address, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


@contextmanager
def controller(state: Path, image: str, variant: str, budget: int = 1 << 30,
               queue: int = 0) -> Iterator[tuple[int, str]]:
    """A controller with one sandbox slot and `queue` places behind it."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(state), image, variant,
                             str(budget), str(queue)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        yield proc.pid, next(line.split()[1].decode() for line in proc.stdout
                             if line.startswith(b"ADDRESS"))
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def holding_the_slot(address: str, mib: int = 0) -> Iterator[None]:
    """A job that waits (with `mib` MiB of files) holds the only slot until cancelled."""
    stubs = Stubs(address)
    wait_for_engine(stubs)
    files = {"main.py": b"import time\nprint('up', flush=True)\ntime.sleep(120)\n"}
    if mib:
        files["data.bin"] = b"\0" * (mib << 20)
    call = stubs.sandbox.Execute(spb.ExecuteRequest(files=files, command=["python3", "main.py"]),
                                 timeout=180)
    for event in call:
        if event.WhichOneof("event") == "output":
            break
    try:
        yield
    finally:
        call.cancel()


def big_invalid_call(address: str, mib: int,
                     metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    """An Execute of `mib` MiB that is invalid once parsed (no command)."""
    body = spb.ExecuteRequest(files={"big.bin": b"x" * (mib << 20)}).SerializeToString()
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", (mib + 1) << 20)])
    with pytest.raises(grpc.RpcError) as info:
        list(channel.unary_stream(EXECUTE)(body, metadata=metadata, timeout=120))
    channel.close()
    return info.value


def growth_of_refused_call(tmp_path: Path, image: str, variant: str) -> tuple[int, grpc.RpcError]:
    with controller(tmp_path, image, variant) as (pid, address), holding_the_slot(address):
        before = peak_rss_mib(pid)
        error = big_invalid_call(address, 200)
        return peak_rss_mib(pid) - before, error


def test_deny_a_large_execute_over_capacity_is_refused_before_its_body_is_read(
        tmp_path: Path, sandbox_image: str) -> None:
    growth, error = growth_of_refused_call(tmp_path, sandbox_image, "gated")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_subject(error) == "server.execute_queue"
    assert growth < 100, f"peak RSS grew {growth} MiB"


def test_sensitivity_admitted_after_the_read_a_large_body_costs_its_size(
        tmp_path: Path, sandbox_image: str) -> None:
    growth, error = growth_of_refused_call(tmp_path, sandbox_image, "ungated")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # read and parsed
    assert growth > 200, f"peak RSS grew only {growth} MiB"


def test_deny_body_bytes_beyond_the_budget_and_a_size_declared_too_small(
        tmp_path: Path, sandbox_image: str) -> None:
    """Budget 300 MiB, a job holding 100 MiB, queue places free: an undeclared call is
    charged its method's cap (257 MiB) until read, so it is refused unread; one that
    declares its size fits."""
    with controller(tmp_path, sandbox_image, "gated", budget=300 << 20,
                    queue=2) as (pid, address), holding_the_slot(address, mib=100):
        before = peak_rss_mib(pid)
        error = big_invalid_call(address, 150)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert quota_subject(error) == "server.max_request_bytes_in_flight"
        assert peak_rss_mib(pid) - before < 100
        declared = ((DECLARED_BYTES, str((150 << 20) + 64)),)
        assert big_invalid_call(address, 150, declared).code() == \
            grpc.StatusCode.INVALID_ARGUMENT  # admitted, read, parsed
        lying = big_invalid_call(address, 2, ((DECLARED_BYTES, "1000"),))
        assert lying.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than the 1000 it declared" in (lying.details() or "")
        bad = big_invalid_call(address, 1, ((DECLARED_BYTES, "lots"),))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"metadata {DECLARED_BYTES}" in (bad.details() or "")


def test_sensitivity_with_an_unbounded_byte_budget_the_same_body_is_read(
        tmp_path: Path, sandbox_image: str) -> None:
    with controller(tmp_path, sandbox_image, "gated", budget=1 << 40,
                    queue=2) as (pid, address), holding_the_slot(address, mib=100):
        before = peak_rss_mib(pid)
        error = big_invalid_call(address, 150)
        growth = peak_rss_mib(pid) - before
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # read and parsed
    assert growth > 150, f"peak RSS grew only {growth} MiB"
