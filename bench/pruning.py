"""Trials per hour and the best metric in a fixed wall time, with and without pruning, on
a real task in real containers: `bilevel run --task examples/mlp-curves` (its train.py
reports a held-out estimate of val_mse each epoch) with random search, the same seed for
every arm, each arm given the same wall-time budget. Arms run interleaved, repeat by
repeat, so a slow spell of the host hits them alike; the table gives each arm's median
over the repeats and its ratio to the `none` arm of the same repeats.

Usage: python bench/pruning.py [--minutes 2] [--repeats 2] [--arms none,median,asha]
           [--min-step 20] [--startup 2] [--image TAG] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.research.task import Objective  # noqa: E402
from controller.store.records import TrialStatus  # noqa: E402
from controller.store.runs import RunStore  # noqa: E402

TASK = ROOT / "examples" / "mlp-curves"


def one_run(arm: str, minutes: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `bilevel run` of `arm` in a fresh state dir: its trials, wall time and best."""
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as state:
        cmd = [str(ROOT / ".venv/bin/bilevel"), "run", "--task", str(TASK), "--trials",
               "100000", "--max-minutes", str(minutes), "--proposer", "random_search",
               "--seed", str(seed), "--final-seeds", "0", "--pruner", arm,
               "--prune-startup", str(args.startup), "--prune-min-step", str(args.min_step),
               "--state-dir", state, "--namespace", f"bench-prune-{arm}"]
        if args.image:
            cmd += ["--image", args.image]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{arm}: bilevel run failed: {done.stderr[-2000:]}")
        store = RunStore(Path(state) / "bilevel.sqlite3")
        try:
            run = store.list_runs(1)[0][0]
            trials = [t for t in store.trials(run.id) if t.finished and t.index > 0]
        finally:
            store.close()
    objective = Objective("val_mse")
    scored = [t.val_bpb for t in trials if t.val_bpb is not None]
    return {"arm": arm, "seed": seed, "trials": len(trials),
            "pruned": sum(t.status is TrialStatus.PRUNED for t in trials),
            "seconds": run.elapsed_seconds,
            "trials_per_hour": 3600 * len(trials) / max(run.elapsed_seconds, 1e-9),
            "best": objective.shown(run.best_val_bpb) if run.best_val_bpb is not None else None,
            "best_trial_searched": min(scored) if scored else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", default="none,median,asha")
    parser.add_argument("--min-step", type=int, default=20)
    parser.add_argument("--startup", type=int, default=2)
    parser.add_argument("--image", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for arm in arms:
            row = one_run(arm, args.minutes, 100 + repeat, args)
            rows.append(row)
            print(f"repeat {repeat} {arm:<7} trials {row['trials']:>3} (pruned "
                  f"{row['pruned']:>3}) in {row['seconds']:.0f} s: "
                  f"{row['trials_per_hour']:.0f}/h, best val_mse {row['best']:.6f}",
                  flush=True)
    print(f"\n{args.minutes:g} min per run, {args.repeats} repeats (medians; ratio to none)")
    base = [r for r in rows if r["arm"] == "none"]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        tph = statistics.median(r["trials_per_hour"] for r in mine)
        best = statistics.median(r["best"] for r in mine)
        line = f"{arm:<7} trials/h {tph:7.0f}  best val_mse {best:.6f}"
        if base and arm != "none":
            ratio = statistics.median(r["trials_per_hour"] / b["trials_per_hour"]
                                      for r, b in zip(mine, base, strict=True))
            better = statistics.median(r["best"] / b["best"]
                                       for r, b in zip(mine, base, strict=True))
            line += f"  trials/h x{ratio:.2f}  best/none {better:.3f}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
