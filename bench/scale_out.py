"""Scale-out: trials per hour and slot utilisation of the local Docker backend and of the
Ray backend on 1 and on 2 Ray nodes (same slot count), on the surrogate and on cpu-tiny,
plus the per-job overhead Ray adds (a trivial job, one at a time, both backends).

    python bench/scale_out.py [--trials 6] [--cpu-tiny-trials 0] [--overhead-jobs 5]

Ray only ever runs inside a loopback-only network namespace: the script re-executes
itself under `unshare` (root needed) and starts a head plus one more node there
(tests/ray_cluster.py). "1 node" is the head with both slots (a custom resource that
only the head has), "2 nodes" one slot on each. On one machine the two nodes share the
same CPUs: the numbers show what Ray costs and that both nodes are used, not the speed-up
of real extra hosts (that scales with the hosts' slots).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.research.settings import TaskSettings
from controller.research.tasks.surrogate import SurrogateTask
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.factory import make_backend
from controller.sandbox.spec import JobSpec, Limits, Status
from tests import ray_cluster

SLOTS = 2
NAMESPACE = "bench-scale-out"


class Timed:
    """A backend wrapper that adds up the seconds its jobs held a slot."""

    def __init__(self, inner: SandboxBackend) -> None:
        self.inner = inner
        self.busy = 0.0
        self.nodes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run_job(self, spec: JobSpec, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = self.inner.run_job(spec, **kwargs)
        with self._lock:
            self.busy += time.monotonic() - started
            self.nodes[result.node or "local"] = self.nodes.get(result.node or "local", 0) + 1
        return result


def _task(kind: str, executor: Any) -> Any:
    if kind == "surrogate":
        return SurrogateTask(executor)
    from controller.research.tasks.trainer import TrainerTask

    return TrainerTask(TaskSettings(preset="cpu-tiny"), executor)


def measure(kind: str, executor: SandboxBackend, trials: int) -> dict[str, Any]:
    timed = Timed(executor)
    task = _task(kind, timed)
    source = task.baseline_source()
    never = threading.Event()
    started = time.monotonic()
    with ThreadPoolExecutor(SLOTS) as pool:
        outcomes = list(pool.map(lambda s: task.evaluate(source, s, never), range(trials)))
    wall = time.monotonic() - started
    bad = [o.job_status for o in outcomes if o.job_status != "ok"]
    return {"trials": trials, "wall_s": round(wall, 2),
            "trials_per_hour": round(3600 * trials / wall, 1),
            "slot_utilisation": round(timed.busy / (SLOTS * wall), 3),
            "jobs_per_node": sorted(timed.nodes.values()), "not_ok": bad}


def overhead(executor: SandboxBackend, jobs: int, parallel: int = 1) -> float:
    """Median seconds of a trivial job, `parallel` at a time."""
    spec = JobSpec(files={"main.py": b"print('hi')\n"}, command=("python3", "main.py"),
                   limits=Limits(wall_seconds=60, memory_bytes=256 << 20))

    def one(_: int) -> float:
        started = time.monotonic()
        assert executor.run_job(spec).status is Status.OK
        return time.monotonic() - started

    with ThreadPoolExecutor(parallel) as pool:
        times = [t for _ in range(jobs) for t in pool.map(one, range(parallel))]
    return statistics.median(times)


def inside(args: argparse.Namespace) -> dict[str, Any]:
    from controller.sandbox.backend_config import RayConfig
    from controller.sandbox.image import ensure_local_image
    from controller.sandbox.ray_backend import RayExecutor

    image = ensure_local_image()
    config = ExecutorConfig(image=image, slots=SLOTS, namespace=NAMESPACE)
    cluster = ray_cluster.new_cluster()
    out: dict[str, Any] = {"slots": SLOTS, "cpus": os.cpu_count()}
    try:
        cluster.start_head(slots=1, extra={"bench_one_node": SLOTS})
        cluster.add_node(slots=1)
        backends: dict[str, SandboxBackend] = {
            "docker": make_backend(config),
            "ray_1_node": RayExecutor(config, RayConfig(address=cluster.address,
                                                        slot_resource="bench_one_node")),
            "ray_2_nodes": RayExecutor(config, RayConfig(address=cluster.address)),
        }
        # Warm up: each backend's first jobs start its workers (and their executors).
        out["cold_start_s"] = {name: round(overhead(ex, 1, parallel=SLOTS), 2)
                               for name, ex in backends.items()}
        for kind, trials in (("surrogate", args.trials), ("cpu-tiny", args.cpu_tiny_trials)):
            if trials:
                out[kind] = {name: measure(kind, ex, trials) for name, ex in backends.items()}
        docker_s = overhead(backends["docker"], args.overhead_jobs)
        ray_s = overhead(backends["ray_2_nodes"], args.overhead_jobs)
        out["per_job_s"] = {"docker": round(docker_s, 3), "ray": round(ray_s, 3),
                            "ray_adds": round(ray_s - docker_s, 3)}
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6, help="surrogate trials per backend")
    parser.add_argument("--cpu-tiny-trials", type=int, default=0,
                        help="cpu-tiny trials per backend (each trains for minutes)")
    parser.add_argument("--overhead-jobs", type=int, default=5)
    args = parser.parse_args()
    if not ray_cluster.in_loopback_namespace():
        env = {**os.environ, ray_cluster.NETNS_ENV: "1"}
        return subprocess.run(ray_cluster.reexec_command([sys.executable, *sys.argv]),
                              env=env, check=False).returncode
    print(json.dumps(inside(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
