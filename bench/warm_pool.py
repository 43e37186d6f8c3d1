"""The warm pool where users feel it, against a cold start in the same process:

1. trials per hour of `bilevel run --task examples/spirals-mlp` (two jobs a trial: the
   candidate, then the trusted scorer), `--pool-size 0` vs the default pool, runs
   interleaved, the median run of each;
2. the round trip of trivial `Execute` calls through the gRPC API, one after another
   (each waits for the last: a client's loop), p50 and p90, with how many ran warm.

    python -m bench.warm_pool [--trials 20] [--runs 2] [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.api.client import Client, ClientConfig
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.logging import configure_logging
from controller.sandbox.backend_config import ExecutorConfig, PoolConfig

REPO = Path(__file__).resolve().parents[1]
TRIVIAL = b"print('ok')\n"


def spirals_run(trials: int, pool: int | None, state: Path) -> float:
    """Seconds of one run of `trials` trials after the baseline (the process's wall)."""
    flags = [] if pool is None else ["--pool-size", str(pool)]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--task",
         str(REPO / "examples/spirals-mlp"), "--trials", str(trials), "--final-seeds", "0",
         "--runtime", "runc", "--state-dir", str(state), "--namespace", f"bench-{state.name}",
         *flags], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


async def execute_round_trips(pool: int, calls: int) -> tuple[list[float], int]:
    """Seconds per Execute call, called back to back; and how many ran warm."""
    with tempfile.TemporaryDirectory() as state:
        config = ServerConfig(state_dir=Path(state), executor=ExecutorConfig(
            slots=1, namespace=f"bench-exec-{pool}", runtime="runc",
            pool=PoolConfig(size=pool)))
        server = ControllerServer(config)
        await server.start()
        seconds: list[float] = []
        warm = 0
        try:
            async with Client(ClientConfig(server.socket.address)) as client:
                for i in range(calls + 2):  # the first two fill the page cache and pool
                    t0 = time.perf_counter()
                    last = None
                    async for event in client.sandbox.Execute(spb.ExecuteRequest(
                            files={"m.py": TRIVIAL}, command=["python3", "m.py"])):
                        last = event
                    if i >= 2:
                        seconds.append(time.perf_counter() - t0)
                        warm += bool(last and last.finished.result.timings.warm)
        finally:
            await server.stop()
    return seconds, warm


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    configure_logging("console", "warning")
    walls: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for mode, pool in (("cold", 0), ("warm", None)):
                walls[mode].append(spirals_run(args.trials, pool, Path(tmp) / f"{mode}{i}"))
    rates = {m: (args.trials + 1) * 3600 / statistics.median(w) for m, w in walls.items()}
    print(f"\nspirals-mlp, {args.trials} trials + baseline, median of {args.runs} runs each")
    for mode, rate in rates.items():
        print(f"  {mode:<5} {statistics.median(walls[mode]):7.1f} s  {rate:7.0f} trials/hour")
    print(f"  warm / cold: {rates['warm'] / rates['cold']:.2f}x")
    print(f"\nExecute round trip through gRPC, {args.calls} calls back to back")
    for mode, size in (("cold", 0), ("warm", 1)):
        seconds, warm = asyncio.run(execute_round_trips(size, args.calls))
        print(f"  {mode:<5} p50 {statistics.median(seconds) * 1000:6.0f} ms  p90 "
              f"{p90(seconds) * 1000:6.0f} ms  ({warm}/{len(seconds)} warm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
