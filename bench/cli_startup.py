"""How long `bilevel` commands take to start, as a ratio to `python -c "import grpc"`
measured in the same run (interleaved, medians), so the numbers compare across machines.

    python bench/cli_startup.py [--repeats 7] [--state-dir DIR]

`runs` without --server reads the store of --state-dir directly (no controller starts,
no LLM SDK is imported); by default a temporary state dir with a few stored runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def _state_with_runs(state: Path, runs: int = 5) -> str:
    """A state dir whose store holds `runs` runs, each with a results.tsv."""
    from controller.store.artifacts import ArtifactStore
    from controller.store.runs import RunStore

    store = RunStore(state / "bilevel.sqlite3")
    artifacts = ArtifactStore(state / "runs")
    for i in range(runs):
        store.create_run(f"run-bench-{i}", {"task": {"preset": "surrogate"},
                                            "budgets": {"max_trials": 3}})
        artifacts.write_results(f"run-bench-{i}", "commit\tval_bpb\n")
    store.close()
    return str(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--state-dir", default="")
    args = parser.parse_args()
    state = args.state_dir or _state_with_runs(Path(tempfile.mkdtemp(prefix="bilevel-bench-")))
    cli = [sys.executable, "-m", "controller.cli", "--log-level", "warning"]
    cases = {
        "python -c 'import grpc'": [sys.executable, "-c", "import grpc"],
        "bilevel --help": [*cli, "--help"],
        "bilevel run --help": [*cli, "run", "--help"],
        "bilevel runs": [*cli, "runs", "--state-dir", state],
        "bilevel artifact results.tsv": [*cli, "artifact", "run-bench-0", "results.tsv",
                                         "--state-dir", state],
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, argv in cases.items():
            samples[name].append(timed(argv))
    base = statistics.median(samples["python -c 'import grpc'"])
    print(f"{'command':32} {'median s':>9} {'x import grpc':>14}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.3f} {median / base:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
