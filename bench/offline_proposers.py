"""Offline proposers compared on the surrogate's response surface, in-process.

Runs the real inner loop (real store, real keep rule) with each offline proposer of the
registry (research/level1/offline/) for a few seeds, on the surrogate task scored by the
controller in this process (`SurrogateTask(None)`: no sandbox), so a 30-trial run takes
seconds. Prints the best val_bpb per run and the mean per proposer.

    python -m bench.offline_proposers --trials 30 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from controller.llm.settings import LLMAccess
from controller.logging import configure_logging
from controller.research.level1 import offline
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.run_proposer import build_proposer
from controller.research.settings import Budgets, ProposerSettings, RunSettings, SearchSettings
from controller.research.tasks.surrogate import SurrogateTask
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore


def best_after(kind: str, seed: int, trials: int, folder: Path) -> tuple[float, float, int]:
    """(best val_bpb, seconds, crashes) of one run."""
    settings = RunSettings(search=SearchSettings(seed=seed),
                           proposer=ProposerSettings(kind=kind),
                           budgets=Budgets(max_trials=trials))
    store = RunStore(folder / "db.sqlite3")
    run_id = f"run-{kind}-{seed}"
    store.create_run(run_id, settings.to_dict())
    task = SurrogateTask(None)  # scored by the controller, in-process: no container
    stop = StopSignal()
    proposer = build_proposer(run_id, settings, task, store, LLMAccess(), stop.event)
    loop = InnerLoop(run_id, settings, task, proposer, store, ArtifactStore(folder / "runs"),
                     stop)
    started = time.monotonic()
    loop.run()
    seconds = time.monotonic() - started
    run = store.get_run(run_id)
    crashes = sum(1 for t in store.trials(run_id) if t.val_bpb is None)
    assert run.best_val_bpb is not None
    return run.best_val_bpb, seconds, crashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(offline.names()),
                        help="comma-separated offline proposers (default: all)")
    args = parser.parse_args()
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            bests, secs, crashes = [], [], 0
            for seed in range(args.seeds):
                best, seconds, crashed = best_after(kind, seed * 1000, args.trials,
                                                    Path(tmp) / f"{kind}-{seed}")
                bests.append(best)
                secs.append(seconds)
                crashes += crashed
            print(f"{kind:<14} best after {args.trials} trials: mean {statistics.mean(bests):.5f}"
                  f"  sd {statistics.stdev(bests) if len(bests) > 1 else 0:.5f}  "
                  f"[{', '.join(f'{b:.5f}' for b in bests)}]  crashes {crashes}  "
                  f"{statistics.mean(secs):.1f} s/run", flush=True)


if __name__ == "__main__":
    main()
