"""Does the offline (rule-based) Level 1.5 help? Paired runs on the surrogate, in-process.

For each seed, the real inner loop runs twice on the surrogate's response surface: L1
alone, and L1 + the rule-based Level 1.5 (same seed, same proposer, same keep rule).
Each run's best configuration is scored by the surrogate's NOISE-FREE value (its
response with the noise switched off), so the comparison is the truth, not a lucky seed.
Prints the paired difference (L1.5 - L1; negative: L1.5 helped), its 95 % t interval
and the wins per arm.

    python -m bench.level15_offline --trials 30 --seeds 10
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from scipy import stats

from controller.logging import configure_logging
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.outer import attach_outer_levels
from controller.research.settings import (
    Budgets,
    OuterSettings,
    ProposerSettings,
    RunSettings,
    SearchSettings,
)
from controller.research.tasks.surrogate import SOURCE, SurrogateTask
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore
from trainer import knobs


def exact_surrogate() -> SurrogateTask:
    """The surrogate without its seed noise: scores a run's best by its true value."""
    return SurrogateTask(None, baseline=knobs.write_knobs(SOURCE.read_text(),
                                                          {"NOISE_STD": 0.0}))


def true_best(levels: tuple[str, ...], seed: int, trials: int, keep_rule: str,
              l15_every: int, folder: Path) -> tuple[float, int]:
    """(noise-free value of the run's best, knobs Level 1.5 froze in total)."""
    settings = RunSettings(search=SearchSettings(seed=seed, keep_rule=keep_rule,
                                                 final_seeds=0),
                           proposer=ProposerSettings(kind="local"),
                           budgets=Budgets(max_trials=trials),
                           outer=OuterSettings(levels=levels, config_controller="rule",
                                               mechanism_source="library",
                                               l15_every=l15_every))
    settings.validate()
    store = RunStore(folder / "db.sqlite3")
    run_id = "run-" + "-".join(levels).replace(".", "_")
    store.create_run(run_id, settings.to_dict())
    task = SurrogateTask(None)  # scored by the controller, in-process: no container
    artifacts = ArtifactStore(folder / "runs")
    loop = InnerLoop(run_id, settings, task, LocalPerturbation(seed, settings.proposer),
                     store, artifacts, StopSignal())
    attach_outer_levels(loop, None, lambda: (_ for _ in ()).throw(RuntimeError("no LLM")))
    loop.run()
    run = store.get_run(run_id)
    assert run.best_trial is not None
    best = artifacts.read_trial(run_id, run.best_trial, "train.py").decode()
    frozen = sum(len(e.payload.get("freeze", [])) for e in store.events_after(run_id, 0)
                 if e.kind.value == "config_adjusted")
    return exact_surrogate().value(best, 0)[0], frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--keep-rule", default="greedy")
    parser.add_argument("--l15-every", type=int, default=5)
    args = parser.parse_args()
    configure_logging(level="warning")
    diffs, a_vals, b_vals, frozen = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.seeds):
            seed = i * 1000
            a, _ = true_best(("1",), seed, args.trials, args.keep_rule, args.l15_every,
                             Path(tmp) / f"a{i}")
            b, f = true_best(("1", "1.5"), seed, args.trials, args.keep_rule,
                             args.l15_every, Path(tmp) / f"b{i}")
            a_vals.append(a)
            b_vals.append(b)
            diffs.append(b - a)
            frozen += f
            print(f"seed {seed:>5}: L1 {a:.5f}  L1+1.5 {b:.5f}  diff {b - a:+.5f}  "
                  f"(froze {f} knobs)", flush=True)
    mean = statistics.fmean(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / \
        math.sqrt(len(diffs))
    print(f"L1 mean {statistics.fmean(a_vals):.5f}; L1+1.5 mean {statistics.fmean(b_vals):.5f};"
          f" paired diff {mean:+.5f} (95 % CI [{mean - half:+.5f}, {mean + half:+.5f}]); "
          f"L1.5 better in {sum(d < 0 for d in diffs)}/{len(diffs)}, worse in "
          f"{sum(d > 0 for d in diffs)}; {frozen} freezes")


if __name__ == "__main__":
    main()
