"""Level 2's portfolio (D) against every fixed search strategy, on a suite of tasks that
are best searched in different ways.

The tasks: the surrogate (smooth, local, noisy) and the example task directories
(examples/: global sampling wins on softmax-blobs; multimodal fourier-multimodal; crash
regions in sgd-mlp-crash; integer, power-of-two and categorical knobs in knn-categorical;
tuned defaults in adam-mlp-tuned; spirals-mlp and waves-regression are noisy). Every
cell is one run of the real inner loop (real store, keep rule, proposers, and the real
portfolio for D) for `--trials` trials; its gain is the baseline's loss minus the best
config's, both re-measured on 3 fresh seeds. Paired seeds: repeat r of every strategy
uses search seed r.

How it fits in minutes: trials are evaluated in this process, not in sandboxes. The
surrogate is scored by the controller (as bench/offline_proposers.py does); an example
task's train.py and score.py (this repository's own scripts: trusted) run with exec in a
temporary directory, /data/ pointing at the task's data folder, within the manifest's
wall time (a watchdog raises in the evaluating thread, as the sandbox would kill the
job). The cells run in a pool of spawned processes, one BLAS thread each; the loop's own
fresh-seed check is off (the bench measures every cell's gain on fresh seeds itself). D
here is the portfolio alone (mechanism rounds need sandboxes).

    python -m bench.portfolio_suite --repeats 10 --trials 30 --workers 2

`--cache FILE` keeps every finished cell (JSON lines) and reuses the cells it holds, so
a change to the portfolio can be measured again with `--rerun D` without re-running the
fixed strategies (their cells depend only on task, strategy, repeat and trials).
`--first-repeat 10 --repeats 20` measures on seeds the portfolio's design was not chosen
on (it was chosen on repeats 0-9).

`--memory` also runs D+memory: D led, as a second run of a task is, by the strategy that
won the task's earlier single-strategy runs (portfolio.lead_from), here the fixed
strategies' cells of the next repeat (the last repeat reads the first): one earlier run
of each strategy, on other seeds, gains measured on fresh seeds as the loop's final
check measures them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import io
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import tomllib
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.analysis import stats
from controller.llm.settings import LLMAccess
from controller.logging import configure_logging
from controller.research.level1 import offline
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.run_proposer import build_proposer
from controller.research.level2 import portfolio
from controller.research.settings import (
    Budgets,
    OuterSettings,
    ProposerSettings,
    RunSettings,
    SearchSettings,
)
from controller.research.task import Task, TrialOutcome, objective_of
from controller.research.tasks.registry import task_from_dir
from controller.research.tasks.surrogate import SurrogateTask
from controller.store.artifacts import ArtifactStore
from controller.store.runs import RunStore

REPO = Path(__file__).resolve().parents[1]
TASKS = ("surrogate", "softmax-blobs", "fourier-multimodal", "sgd-mlp-crash",
         "knn-categorical", "adam-mlp-tuned", "spirals-mlp", "waves-regression")
PORTFOLIO = "D"
LED = "D+memory"  # D led by the winner of another repeat's fixed strategies
FRESH_SEEDS = 3


class WallTimeExceeded(BaseException):
    """Raised into a trial that ran past its manifest's wall time."""


def within(seconds: float, run: Callable[[], None]) -> None:
    """Run `run`, raising WallTimeExceeded in this thread after `seconds` (numpy calls are
    short, so the exception lands within milliseconds of the deadline)."""
    target, finished = threading.get_ident(), threading.Event()

    def watchdog() -> None:
        if not finished.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                       ctypes.py_object(WallTimeExceeded))

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        run()
    finally:
        finished.set()


class InProcessExample:
    """An example task directory whose scripts run in this process (bench only)."""

    seeds_in_parallel = True

    def __init__(self, name: str) -> None:
        self.folder = REPO / "examples" / name
        self.inner = task_from_dir(self.folder, None)
        self.name, self.description = self.inner.name, self.inner.description
        self.protected = self.inner.protected
        self.objective = objective_of(self.inner)
        manifest = tomllib.loads((self.folder / "bilevel-task.toml").read_text())
        self.score_source = self._local((self.folder / "score.py").read_text())
        assert "score" in manifest, f"{name} has no trusted scorer"
        self.wall = (float(manifest["train"]["wall_seconds"]),
                     float(manifest["score"]["wall_seconds"]))

    def baseline_source(self) -> str:
        return self.inner.baseline_source()

    def search_space(self) -> Any:
        return self.inner.search_space()

    def read_knobs(self, source: str) -> dict[str, Any]:
        return self.inner.read_knobs(source)

    def apply(self, source: str, changes: dict[str, Any]) -> str:
        return self.inner.apply(source, changes)

    def _local(self, source: str) -> str:
        return source.replace('"/data/', f'"{self.folder}/data/')

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as work:
            here = os.getcwd()
            os.chdir(work)
            os.environ["TRIAL_SEED"] = str(seed)
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    within(self.wall[0], lambda: exec(
                        compile(self._local(source), "train.py", "exec"),
                        {"__name__": "__main__"}))
                with contextlib.redirect_stdout(out):
                    within(self.wall[1], lambda: exec(
                        compile(self.score_source, "score.py", "exec"),
                        {"__name__": "__main__"}))
                metrics = json.loads(out.getvalue().strip().splitlines()[-1])
            except WallTimeExceeded:
                return TrialOutcome("timeout", None, detail="exceeded its wall time",
                                    seconds=time.monotonic() - started)
            except BaseException as exc:  # the candidate's crash is its result
                if isinstance(exc, KeyboardInterrupt):
                    raise
                return TrialOutcome("error", None, exception={
                    "type": type(exc).__name__, "message": str(exc)[:200], "frames": []},
                    seconds=time.monotonic() - started)
            finally:
                os.chdir(here)
        raw = metrics.get(self.objective.metric)
        if not isinstance(raw, int | float) or not math.isfinite(raw):
            return TrialOutcome("ok", None, metrics=metrics, detail="no finite metric")
        return TrialOutcome("ok", self.objective.loss(float(raw)), metrics=metrics,
                            seconds=time.monotonic() - started)


def make_task(name: str) -> Task:
    return SurrogateTask(None) if name == "surrogate" else InProcessExample(name)


@dataclass(frozen=True)
class Cell:
    task: str
    strategy: str  # an offline proposer, D, or D+memory
    repeat: int
    trials: int
    lead: str = ""  # D+memory: the strategy memory leads with ("": none)


@dataclass(frozen=True)
class Result:
    cell: Cell
    gain: float  # baseline loss - best loss on fresh seeds (positive: better)
    seconds: float
    arms: dict[str, int]  # D: trials per arm


def run_cell(cell: Cell) -> Result:
    try:
        return _run_cell(cell)
    except Exception as exc:  # name the cell: a worker's traceback alone does not
        raise RuntimeError(f"{cell}: {type(exc).__name__}: {exc}") from exc


def _run_cell(cell: Cell) -> Result:
    configure_logging(level="error")
    warnings.simplefilter("ignore", RuntimeWarning)  # the candidates' overflows
    started = time.monotonic()
    task = make_task(cell.task)
    led = cell.strategy in (PORTFOLIO, LED)
    kind = "local" if led else cell.strategy
    levels = ("1", "2") if led else ("1",)
    settings = RunSettings(search=SearchSettings(seed=cell.repeat, final_seeds=0),
                           proposer=ProposerSettings(kind=kind, use_memory=False),
                           budgets=Budgets(max_trials=cell.trials),
                           outer=OuterSettings(levels=levels))
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "db.sqlite3")
        run_id = "run-bench"
        store.create_run(run_id, settings.to_dict())
        stop = StopSignal()
        proposer = build_proposer(run_id, settings, task, store, LLMAccess(), stop.event,
                                  lead=cell.lead or None)
        InnerLoop(run_id, settings, task, proposer, store, ArtifactStore(Path(tmp) / "runs"),
                  stop).run()
        trials = store.trials(run_id)
        run = store.get_run(run_id)
        assert run.best_trial is not None
        base_source = task.baseline_source()
        best_source = ArtifactStore(Path(tmp) / "runs").read_trial(
            run_id, run.best_trial, "train.py").decode()
    seeds = [100_000 + cell.repeat * 10 + i for i in range(FRESH_SEEDS)]
    base = [task.evaluate(base_source, s, threading.Event()).val_bpb for s in seeds]
    best = [task.evaluate(best_source, s, threading.Event()).val_bpb for s in seeds]
    if any(v is None for v in base):
        raise RuntimeError(f"{cell.task}: the baseline crashed on a fresh seed")
    gain = 0.0 if any(v is None for v in best) else statistics.fmean(
        b - c for b, c in zip(base, best, strict=True))  # type: ignore[operator]
    arms: dict[str, int] = {}
    for t in trials:
        if t.arm:
            arms[t.arm] = arms.get(t.arm, 0) + 1
    return Result(cell, gain, time.monotonic() - started, arms)


def report(results: list[Result], strategies: list[str], repeats: int,
           mine: str = PORTFOLIO) -> None:
    """The per-task table and the done-when lines for the portfolio `mine` (D or
    D+memory) against the fixed strategies in `strategies`."""
    by: dict[tuple[str, str], dict[int, float]] = {}
    arms: dict[str, dict[str, int]] = {}
    for r in results:
        if r.cell.strategy not in strategies:
            continue
        by.setdefault((r.cell.task, r.cell.strategy), {})[r.cell.repeat] = r.gain
        if r.arms and r.cell.strategy == mine:
            counts = arms.setdefault(r.cell.task, {})
            for a, n in r.arms.items():
                counts[a] = counts.get(a, 0) + n
    tasks = sorted({r.cell.task for r in results}, key=TASKS.index)
    print(f"\n{mine}: mean fresh-seed gain (loss units, positive = better), n = {repeats} "
          "repeats")
    print(f"{'task':<20}" + "".join(f"{s:>14}" for s in strategies) +
          f"{'best fixed':>14}{'/best':>8}{'p vs local':>14}")
    ratios: list[float] = []
    ranks: dict[str, list[int]] = {s: [] for s in strategies}
    p_local: list[float] = []
    bests: list[str] = []
    d_minus_local: list[float] = []
    for task in tasks:
        means = {s: statistics.fmean(by[(task, s)].values()) for s in strategies}
        fixed = [s for s in strategies if s != mine]
        best = max(fixed, key=means.__getitem__)
        ratio = means[mine] / means[best] if means[best] > 0 else math.nan
        ratios.append(ratio)
        order = sorted(strategies, key=lambda s: -means[s])
        for s in strategies:
            ranks[s].append(order.index(s) + 1)
        p = stats.paired_permutation_p(*_pairs(by, task, mine, "local"))
        p_local.append(p)
        bests.append(best)
        d_minus_local.append(means[mine] - means["local"])
        print(f"{task:<20}" + "".join(f"{means[s]:>14.4g}" for s in strategies) +
              f"{best:>14}{ratio:>8.2f}{p:>14.3g}")
    holm = stats.holm(p_local)
    not_local = [b != "local" for b in bests]
    # Which tasks count as "local is not the best": the best fixed strategy's mean beats
    # local's, and significantly so (paired test, Holm over the tasks): where no fixed
    # strategy is told apart from local, asking D to beat local asks more of D than of
    # the best fixed strategy.
    p_best = [stats.paired_permutation_p(*_pairs(by, task, best, "local"))
              if best != "local" else math.nan for task, best in zip(tasks, bests, strict=True)]
    holm_best = stats.holm(p_best)
    beaten = [p < 0.05 for p in holm_best]
    print(f"\nHolm-corrected p of {mine} vs local (two-sided paired permutation), per task:")
    for i, task in enumerate(tasks):
        kind = (f"{bests[i]} beats local (Holm p {holm_best[i]:.3g})" if beaten[i]
                else "no fixed strategy beats local significantly" if not_local[i]
                else "local is the best fixed")
        print(f"  {task:<20} p {p_local[i]:.3g}  Holm {holm[i]:.3g}  {mine}-local "
              f"{d_minus_local[i]:+.4g}  ({kind})")
    print("\ndone-when lines:")
    print(f"  {mine} >= 0.8 of the best fixed on every task: {min(ratios) >= 0.8} "
          f"(min {min(ratios):.2f})")
    wins = [holm[i] < 0.05 and d_minus_local[i] > 0 for i in range(len(tasks))]
    for label, chosen in (("the best fixed mean is not local's", not_local),
                          ("a fixed strategy beats local (Holm p < 0.05)", beaten)):
        named = [t for t, c in zip(tasks, chosen, strict=True) if c]
        won = [t for t, c, w in zip(tasks, chosen, wins, strict=True) if c and w]
        print(f"  where {label}: {mine} beats local (Holm p < 0.05) on {len(won)} of "
              f"{len(named)}" + (f"; not on {', '.join(t for t in named if t not in won)}"
                                 if len(won) < len(named) else ""))
    worse = [t for i, t in enumerate(tasks)
             if not beaten[i] and holm[i] < 0.05 and d_minus_local[i] < 0]
    print(f"  where no fixed strategy beats local: {mine} significantly worse than local on "
          + (", ".join(worse) if worse else "none"))
    print(f"\n{mine}'s gain as a share of the best fixed strategy's: min {min(ratios):.2f}, "
          f"median {statistics.median(ratios):.2f}")
    print("mean rank (1 = best): " + ", ".join(
        f"{s} {statistics.fmean(v):.2f}" for s, v in sorted(ranks.items(),
                                                               key=lambda kv: sum(kv[1]))))
    print(f"{mine}'s trials per arm, over all repeats: " + "; ".join(
        f"{t}: " + ", ".join(f"{a} {n}" for a, n in sorted(m.items(), key=lambda x: -x[1]))
        for t, m in arms.items()))


def _pairs(by: dict[tuple[str, str], dict[int, float]], task: str, arm: str,
           control: str) -> tuple[list[float], list[float]]:
    """The two strategies' gains on `task`, paired by repeat (the repeats both ran)."""
    mine, other = by[(task, arm)], by[(task, control)]
    shared = sorted(set(mine) & set(other))
    return [mine[i] for i in shared], [other[i] for i in shared]


def load_cache(path: Path | None, trials: int) -> dict[Cell, Result]:
    if path is None or not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        cell = Cell(**row["cell"])
        if cell.trials == trials:
            out[cell] = Result(cell, row["gain"], row["seconds"], row["arms"])
    return out


def save(path: Path | None, result: Result) -> None:
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps({"cell": dataclasses.asdict(result.cell), "gain": result.gain,
                                "seconds": result.seconds, "arms": result.arms}) + "\n")


def leads(results: list[Result], fixed: list[str], repeats: list[int]) -> dict[
        tuple[str, int], str]:
    """D+memory's lead per (task, repeat): portfolio.lead_from over the fixed strategies'
    gains in the next repeat (the last repeat reads the first), one run of each."""
    gain = {(r.cell.task, r.cell.strategy, r.cell.repeat): r.gain for r in results}
    out = {}
    for task in {r.cell.task for r in results}:
        for i, repeat in enumerate(repeats):
            other = repeats[(i + 1) % len(repeats)]
            out[(task, repeat)] = portfolio.lead_from(
                [(s, gain[(task, s, other)]) for s in fixed]) or ""
    return out


def run_cells(cells: list[Cell], cache: Path | None, rerun: set[str], trials: int,
              workers: int) -> tuple[list[Result], int]:
    """Every cell's result (from the cache, or run in the pool) and how many ran."""
    cached = {c: r for c, r in load_cache(cache, trials).items() if c.strategy not in rerun}
    todo = [c for c in cells if c not in cached]
    results = [cached[c] for c in cells if c in cached]
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # read by the spawned workers' numpy: one core per cell
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) \
            as pool:
        for result in pool.map(run_cell, todo, chunksize=1):
            save(cache, result)
            results.append(result)
    return results, len(todo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--first-repeat", type=int, default=0,
                        help="the first repeat (search seed): e.g. 10 to confirm on seeds "
                        "the portfolio's design was not chosen on (0-9)")
    parser.add_argument("--strategies", default="",
                        help="the fixed strategies to compare (default: every offline "
                        "proposer); D is always run")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--cache", type=Path, help="JSON-lines file of finished cells")
    parser.add_argument("--rerun", default="", help="strategies to run again despite the "
                        "cache, e.g. D after a change to the portfolio")
    parser.add_argument("--memory", action="store_true", help="also run D+memory: D led "
                        "by the winner of the next repeat's fixed strategies")
    args = parser.parse_args()
    if args.memory and args.repeats < 2:
        parser.error("--memory needs --repeats >= 2 (a repeat's lead comes from another)")
    fixed = [s for s in args.strategies.split(",") if s] or list(offline.names())
    fixed = fixed if "local" in fixed else ["local", *fixed]  # D is tested against local
    strategies = [*fixed, PORTFOLIO]
    repeats = list(range(args.first_repeat, args.first_repeat + args.repeats))
    tasks = args.tasks.split(",")
    rerun = set(filter(None, args.rerun.split(",")))
    started = time.monotonic()
    cells = [Cell(t, s, r, args.trials) for t in tasks for r in repeats for s in strategies]
    results, ran = run_cells(cells, args.cache, rerun, args.trials, args.workers)
    if args.memory:
        lead = leads(results, fixed, repeats)
        more = [Cell(t, LED, r, args.trials, lead[(t, r)]) for t in tasks for r in repeats]
        led, also = run_cells(more, args.cache, rerun, args.trials, args.workers)
        results, ran, cells = results + led, ran + also, cells + more
    report(results, strategies, args.repeats)
    if args.memory:
        report(results, [*fixed, LED], args.repeats, LED)
        print("D+memory's leads: " + "; ".join(
            f"{t}: " + ", ".join(f"{a or 'none'} {n}" for a, n in sorted(Counter(
                c.lead for c in cells if c.strategy == LED and c.task == t).items()))
            for t in tasks))
    print(f"\n{ran} runs of {args.trials} trials in {time.monotonic() - started:.0f} s "
          f"with {args.workers} workers ({len(cells) - ran} cells from the cache); "
          f"cell seconds summed: {sum(r.seconds for r in results):.0f}")


if __name__ == "__main__":
    main()
