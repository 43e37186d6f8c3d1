"""How long `bilevel` commands take to start, as a ratio to `python -c "import grpc"`
measured in the same run (interleaved, medians), so the numbers compare across machines.

    python bench/cli_startup.py [--repeats 7] [--state-dir DIR]

`runs` without --server starts an in-process controller on --state-dir (a fresh
temporary one by default), which is what a user without a server waits for.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--state-dir", default="")
    args = parser.parse_args()
    state = args.state_dir or tempfile.mkdtemp(prefix="bilevel-bench-")
    cli = [sys.executable, "-m", "controller.cli", "--log-level", "warning"]
    cases = {
        "python -c 'import grpc'": [sys.executable, "-c", "import grpc"],
        "bilevel --help": [*cli, "--help"],
        "bilevel run --help": [*cli, "run", "--help"],
        "bilevel runs (in-process)": [*cli, "runs", "--state-dir", state],
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, argv in cases.items():
            samples[name].append(timed(argv))
    base = statistics.median(samples["python -c 'import grpc'"])
    print(f"{'command':30} {'median s':>9} {'x import grpc':>14}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:30} {median:9.3f} {median / base:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
