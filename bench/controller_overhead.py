"""Controller overhead: what the service adds around sandbox jobs.

1. Per-trial overhead of the Level-1 loop (propose, validate, store, artifacts, events,
   gRPC) = trial period - time inside the backend's run_job, on the surrogate task.
2. Execute throughput with trivial jobs through gRPC vs the executor called directly,
   at the same concurrency (= sandbox slots).

Usage: python bench/controller_overhead.py [--trials 30] [--jobs 40] [--slots 2]
Needs Docker and the sandbox image (`bilevel image build`). Prints medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controller.api.client import Client, ClientConfig
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.logging import configure_logging
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.factory import make_backend
from controller.sandbox.spec import JobSpec

TRIVIAL = b"print('ok')\n"


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t0)
    return wrapper


async def trial_overhead(server: ControllerServer, client: Client, trials: int) -> dict[str, float]:
    executor = await asyncio.to_thread(server.engine.get)
    job_seconds: list[float] = []
    executor.run_job = _timed(executor.run_job, job_seconds)  # type: ignore[method-assign]
    run = await client.runs.CreateRun(rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset="surrogate"), budgets=rpb.Budgets(max_trials=trials)))
    finished: list[float] = []
    async for event in client.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id)):
        if event.HasField("trial_started") or event.HasField("trial_finished"):
            finished.append(time.perf_counter())
    periods = [b - a for a, b in zip(finished[::2], finished[1::2], strict=True)]
    cycle = [b - a for a, b in zip(finished[1::2], finished[3::2], strict=False)]
    job = statistics.median(job_seconds)
    return {"trial wall (started->finished)": statistics.median(periods),
            "trial cycle (finished->finished)": statistics.median(cycle),
            "job (inside executor.run)": job,
            "overhead per trial (cycle - job)": statistics.median(cycle) - job}


async def execute_grpc(client: Client, jobs: int, concurrency: int) -> tuple[float, float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            async for _ in client.sandbox.Execute(spb.ExecuteRequest(
                    files={"m.py": TRIVIAL}, command=["python3", "m.py"])):
                pass
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    return jobs / (time.perf_counter() - t0), statistics.median(latencies)


def execute_direct(executor: SandboxBackend, jobs: int, concurrency: int) -> tuple[float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    spec = JobSpec(files={"m.py": TRIVIAL}, command=("python3", "m.py"))

    def one(_: int) -> None:
        t0 = time.perf_counter()
        executor.run_job(spec)
        with lock:
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - t0), statistics.median(latencies)


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory() as state:
        config = ServerConfig(state_dir=Path(state),
                              executor=ExecutorConfig(slots=args.slots, namespace="bench"),
                              execute_queue=args.jobs)
        server = ControllerServer(config)
        await server.start()  # its private Unix socket, as `bilevel run` uses it
        async with Client(ClientConfig(server.socket.address)) as client:
            overhead = await trial_overhead(server, client, args.trials)
            await execute_grpc(client, args.slots * 2, args.slots)  # warm-up
            grpc_rate, grpc_lat = await execute_grpc(client, args.jobs, args.slots)
        await server.stop()
    direct = make_backend(ExecutorConfig(slots=args.slots, namespace="bench-direct"))
    execute_direct(direct, args.slots * 2, args.slots)
    direct_rate, direct_lat = execute_direct(direct, args.jobs, args.slots)
    direct.close()

    print(f"\nLevel-1 loop on the surrogate task, {args.trials} trials (medians)")
    for name, value in overhead.items():
        print(f"  {name:<36} {value * 1000:8.1f} ms")
    print(f"\nExecute, {args.jobs} trivial jobs, concurrency {args.slots} (= slots)")
    print(f"  {'path':<20} {'jobs/s':>8} {'median latency':>16}")
    print(f"  {'gRPC Execute':<20} {grpc_rate:8.2f} {grpc_lat * 1000:13.1f} ms")
    print(f"  {'executor directly':<20} {direct_rate:8.2f} {direct_lat * 1000:13.1f} ms")
    print(f"  gRPC cost per job: {(grpc_lat - direct_lat) * 1000:+.1f} ms (median latency)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--slots", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
