"""What the sandbox adds per job, cold and warm: the same payload as a bare host
subprocess and through the Docker backend under runc and runsc, each from a cold start
(no pool) and from the warm pool (a container created and started before the job came;
the bench waits until one is waiting, untimed, so it times the job's own path). N runs
each, interleaved; medians, p90 and what each adds to bare, plus where a warm job's time
goes (hand-over, run, teardown).

    python -m bench.sandbox_overhead [--repeats 20] [--payloads trivial,torch]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.sandbox.backend_config import ExecutorConfig, PoolConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status

PAYLOADS = {
    "trivial": "print('hello')\n",
    "torch": "import torch\nprint(torch.ones(2).sum().item())\n",
}
MODES = ("runc cold", "runc warm", "runsc cold", "runsc warm")


def bare(source: str, folder: Path) -> float:
    script = folder / "main.py"
    script.write_text(source)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    return time.perf_counter() - started


def sandboxed(executor: DockerExecutor, source: str, runtime: str,
              warm: bool) -> tuple[float, JobResult]:
    spec = _spec(source, runtime)
    if warm:
        deadline = time.monotonic() + 60
        while executor.pool.idle() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # untimed: the pool refills between jobs
    started = time.perf_counter()
    result = executor.run_job(spec)
    elapsed = time.perf_counter() - started
    if result.status is not Status.OK:
        raise SystemExit(f"{runtime} job failed: {result}")
    if result.timings.warm != warm:
        raise SystemExit(f"{runtime}: expected a {'warm' if warm else 'cold'} start")
    return elapsed, result


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--payloads", default="trivial,torch")
    args = parser.parse_args()
    executors = {
        "cold": DockerExecutor(ExecutorConfig(slots=1, namespace="bench-cold",
                                              runtime="runc", pool=PoolConfig(size=0))),
        "warm": DockerExecutor(ExecutorConfig(slots=1, namespace="bench-warm",
                                              runtime="runc", pool=PoolConfig(size=1))),
    }
    rows = []
    parts: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.payloads.split(","):
                source = PAYLOADS[name]
                times: dict[str, list[float]] = {m: [] for m in ("bare", *MODES)}
                for mode in MODES:  # page cache, and a first job of each class
                    runtime, start = mode.split()
                    if start == "cold":
                        sandboxed(executors["cold"], source, runtime, False)
                    else:
                        executors["warm"].prewarm(_spec(source, runtime))
                for _ in range(args.repeats):
                    times["bare"].append(bare(source, Path(tmp)))
                    for mode in MODES:
                        runtime, start = mode.split()
                        elapsed, result = sandboxed(executors[start], source, runtime,
                                                    start == "warm")
                        times[mode].append(elapsed)
                        if start == "warm":
                            t = result.timings
                            parts.setdefault(f"{name} {runtime}", []).append(
                                (t.start_s, t.run_s, t.teardown_s))
                rows.append((name, times))
    finally:
        for executor in executors.values():
            executor.close()
    print(f"\nseconds per job over {args.repeats} interleaved runs (median / p90), and "
          "the median added to bare")
    print(f"{'payload':<9}{'mode':<12}{'median':>8}{'p90':>8}{'added':>9}{'x bare':>8}")
    for name, times in rows:
        base = statistics.median(times["bare"])
        for mode in ("bare", *MODES):
            med = statistics.median(times[mode])
            print(f"{name:<9}{mode:<12}{med:>8.3f}{p90(times[mode]):>8.3f}"
                  f"{med - base:>+9.3f}{med / base:>7.2f}x")
    print("\nwarm jobs, median seconds: hand-over (files placed), run, teardown")
    for key, values in parts.items():
        hand, run, down = (statistics.median(v) for v in zip(*values, strict=True))
        print(f"{key:<16}{hand:>8.3f}{run:>8.3f}{down:>8.3f}")
    return 0


def _spec(source: str, runtime: str) -> JobSpec:
    return JobSpec(files={"main.py": source.encode()}, command=("python3", "main.py"),
                   runtime=runtime, limits=Limits(wall_seconds=120, memory_bytes=2 << 30))


if __name__ == "__main__":
    sys.exit(main())
