"""What the sandbox adds per job: the same payload as a bare host subprocess and through
the executor (runc and runsc), N times each, interleaved; medians and added seconds.

    python bench/sandbox_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.factory import make_backend
from controller.sandbox.spec import JobSpec, Limits, Status

PAYLOADS = {
    "trivial": "print('hello')\n",
    "import torch": "import torch\nprint(torch.ones(2).sum().item())\n",
}


def bare(source: str, folder: Path) -> float:
    script = folder / "main.py"
    script.write_text(source)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    return time.perf_counter() - started


def sandboxed(executor: SandboxBackend, source: str, runtime: str) -> float:
    spec = JobSpec(files={"main.py": source.encode()}, command=("python3", "main.py"),
                   runtime=runtime, limits=Limits(wall_seconds=120, memory_bytes=2 << 30))
    started = time.perf_counter()
    result = executor.run_job(spec)
    elapsed = time.perf_counter() - started
    if result.status is not Status.OK:
        raise SystemExit(f"{runtime} job failed: {result}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    executor = make_backend(ExecutorConfig(slots=1, namespace="bench"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in PAYLOADS.items():
            times: dict[str, list[float]] = {"bare": [], "runc": [], "runsc": []}
            sandboxed(executor, source, "runc")  # warm the page cache once
            for _ in range(args.repeats):
                times["bare"].append(bare(source, Path(tmp)))
                times["runc"].append(sandboxed(executor, source, "runc"))
                times["runsc"].append(sandboxed(executor, source, "runsc"))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((name, med))
    executor.close()
    print(f"\nmedian seconds per job over {args.repeats} interleaved runs")
    print(f"{'payload':<14}{'bare':>8}{'runc':>8}{'runsc':>8}{'+runc':>9}{'+runsc':>9}"
          f"{'runc/bare':>11}")
    for name, med in rows:
        print(f"{name:<14}{med['bare']:>8.3f}{med['runc']:>8.3f}{med['runsc']:>8.3f}"
              f"{med['runc'] - med['bare']:>+9.3f}{med['runsc'] - med['bare']:>+9.3f}"
              f"{med['runc'] / med['bare']:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
