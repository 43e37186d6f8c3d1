"""A run's settings as typed dataclasses, validated once at the edge (CreateRun)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.errors import FieldError
from controller.llm.settings import LLMSettings
from controller.research.level1 import offline
from controller.research.level1.pruners import PRUNERS, PrunerSettings
from controller.sandbox.spec import RUNTIMES

# The offline proposers (no LLM) are their registry's (research/level1/offline/).
OFFLINE_PROPOSERS = offline.names()
# The default portfolio: local steps, a model of the good region (TPE), and global
# sampling twice over - random, and Sobol's stratified points, which find a narrow good
# region of a few knobs sooner. CMA-ES is left out: in the portfolio it competes with
# local for the exploitation share and drew D below 0.6 of the best fixed strategy on a
# task where global sampling wins; without it D reached 0.81-1.04 on all eight tasks of
# bench/portfolio_suite.py (chosen on that suite: no held-out task confirms it yet).
# --portfolio names the arms, cmaes included.
PORTFOLIO_ARMS = ("local", "tpe", "random_search", "sobol")
PROPOSERS = (*OFFLINE_PROPOSERS, "llm")
RENAMED_PROPOSERS = offline.RENAMED
MODES = ("params", "code")
KEEP_RULES = ("greedy", "noise")
MAX_TRIALS = 100_000
MAX_BATCH = 64


@dataclass(frozen=True)
class TaskSettings:
    preset: str = "surrogate"
    train_py: str | None = None  # a baseline to start from instead of the preset's
    data_ref: str = ""
    runtime: str = "runc"  # sandbox runtime of the run's jobs: "runc" or "runsc" (gVisor)
    # Set by the server only: the run's task is the task directory a client sent, stored
    # under runs/<run_id>/task/ with this sha256 (controller/store/task_bundle.py).
    task_sha256: str = ""
    # Set by the server only, from the loaded task (Objective in controller/research/
    # task.py): what clients label values with. Stored values stay the loss.
    metric: str = "val_bpb"
    direction: str = "minimize"
    self_reported: bool = False
    # Set by the server only: the path of the file the search edits (a task directory's
    # editable, `flags.json` for a flags task); artifacts are also served under it.
    editable: str = "train.py"
    # Surrogate only: score trials in the controller from the knobs, no sandbox job.
    in_process: bool = False


@dataclass(frozen=True)
class SearchSettings:
    seed: int = 0
    frozen_knobs: tuple[str, ...] = ()
    min_improvement: float = 0.0  # greedy rule: keep if val_bpb < best - this
    # "greedy": keep any strict improvement (the paper's group A). "noise": run the
    # baseline with `noise_seeds` seeds to measure sigma, keep only gains whose t
    # statistic passes the t quantile of "z > noise_margin", confirmed by a re-run with
    # another seed. 8 seeds: with 3, sigma is so uncertain that the t threshold is 4.5.
    keep_rule: str = "greedy"
    noise_seeds: int = 8
    noise_margin: float = 2.0
    batch_size: int = 1  # trials in flight at once (each takes a sandbox slot)
    pipeline: bool = False  # propose the next trials while trials run
    # At the end, the best and the baseline run again on this many fresh paired seeds;
    # the summary says "beats" only when the interval of the difference excludes 0.
    final_seeds: int = 3
    # Early stopping on the candidates' reported curves (research/level1/pruners.py):
    # "none", "median" or "asha"; warm-up of prune_startup_trials trials and steps below
    # prune_min_step (asha: its first rung, 0 = automatic); asha keeps 1/prune_reduction.
    pruner: str = "none"
    prune_startup_trials: int = 3
    prune_min_step: int = 0
    prune_reduction: int = 3

    def pruning(self) -> PrunerSettings:
        return PrunerSettings(self.pruner, self.prune_startup_trials, self.prune_min_step,
                              self.prune_reduction)


@dataclass(frozen=True)
class ProposerSettings:
    kind: str = "local"  # one of PROPOSERS: an offline one, or "llm"
    max_changes: int = 2
    step: float = 0.5
    mode: str = "params"  # llm: "params" (JSON knob changes) or "code" (edits of train.py)
    # Repair turns after a rejected answer (each quotes the validation error back); then
    # the trial goes to the offline fallback proposer.
    max_invalid_retries: int = 1
    max_fix_attempts: int = 2  # follow-up proposals that try to fix one crash
    history_trials: int = 12  # recent trials shown in the prompt
    use_memory: bool = True  # lessons of earlier runs on the task go into the prompt


@dataclass(frozen=True)
class Budgets:
    max_trials: int = 10  # trials after the baseline
    max_wall_seconds: float = 0.0  # 0: unlimited
    max_llm_tokens: int = 0  # 0: unlimited
    max_llm_cost_usd: float = 0.0  # 0: unlimited


LEVELS = ("1", "1.5", "2")
MECHANISM_SOURCES = ("library", "llm")
CONFIG_CONTROLLERS = ("rule", "llm")


@dataclass(frozen=True)
class InitialMechanism:
    """A mechanism the run starts with: a built-in by name (source "") or a module's
    source (e.g. one exported from an earlier run). It passes the same gates."""

    name: str
    source: str = ""


@dataclass(frozen=True)
class OuterSettings:
    """Levels 1.5 and 2 and the mechanism wiring (research/level15/, research/level2/)."""

    levels: tuple[str, ...] = ("1",)
    mechanisms: tuple[InitialMechanism, ...] = ()  # the starting set
    suggest_every: int = 2  # on every n-th trial a mechanism suggestion may replace the
    #                         proposer's proposal (suggest is called on those trials)
    filter_retries: int = 2  # proposals re-asked after a mechanism rejected one
    # Level 1.5: "rule" is the offline, deterministic controller; "llm" asks the LLM.
    # Offline, `bilevel run` leaves 1.5 out unless "rule" is named: on the surrogate the
    # rule controller did not beat Level 1 alone (bench/level15_offline.py).
    config_controller: str = "rule"
    l15_every: int = 5  # trials between config cycles
    max_freeze: int = 2  # knobs frozen per cycle
    max_unfreeze: int = 2  # knobs unfrozen per cycle
    max_frozen: int = 6  # knobs frozen at once (Level 1.5's own; the run's stay frozen)
    l15_retries: int = 2  # invalid LLM answers fed back before the cycle is skipped
    # Level 2: where mechanisms come from, how often, and how long each is judged.
    mechanism_source: str = "llm"
    l2_every: int = 10  # trials between rounds (a stall - no keep for that long - too)
    l2_window: int = 0  # trials a new mechanism is scored over; 0: l2_every
    max_l2_rounds: int = 0  # 0: unlimited
    code_retries: int = 2  # code answers that fail the static gate, fed back
    explore_domains: tuple[str, ...] = ()  # fields named in the explore prompt; () : none
    # Offline Level 2 learns from these runs' verdicts only ((): every earlier run, or
    # none without memory); an ablation passes an earlier ablation's runs.
    library_prior_runs: tuple[str, ...] = ()
    # Level 2's portfolio (research/level2/portfolio.py): the search strategies, besides
    # the run's own proposer, that each trial is allocated among. None: PORTFOLIO_ARMS;
    # (): no portfolio (Level 2 only adds mechanisms to the run's proposer).
    portfolio: tuple[str, ...] | None = None
    # The arm that takes portfolio.LEAD_SHARE of every draw; "": memory's lead, if any.
    portfolio_lead: str = ""

    def portfolio_arms(self, proposer_kind: str) -> tuple[str, ...]:
        """The arms of this run's portfolio, the run's proposer first; () for none."""
        if "2" not in self.levels or self.portfolio == ():
            return ()
        others = PORTFOLIO_ARMS if self.portfolio is None else self.portfolio
        return (proposer_kind, *(a for a in others if a != proposer_kind))

    @property
    def window(self) -> int:
        return self.l2_window or self.l2_every

    def validate(self, proposer_kind: str) -> None:
        if not self.levels or any(lv not in LEVELS for lv in self.levels) or \
                "1" not in self.levels or len(set(self.levels)) != len(self.levels):
            raise FieldError("outer.levels", f"must list distinct levels of {LEVELS} "
                             f"including 1, got {self.levels}")
        if self.mechanism_source not in MECHANISM_SOURCES:
            raise FieldError("outer.mechanism_source", f"must be one of {MECHANISM_SOURCES}")
        if self.config_controller not in CONFIG_CONTROLLERS:
            raise FieldError("outer.config_controller",
                             f"must be one of {CONFIG_CONTROLLERS}")
        for name, value, low, high in (
                ("suggest_every", self.suggest_every, 0, 1000),
                ("filter_retries", self.filter_retries, 0, 10),
                ("l15_every", self.l15_every, 1, 10_000),
                ("max_freeze", self.max_freeze, 0, 16),
                ("max_unfreeze", self.max_unfreeze, 0, 16),
                ("max_frozen", self.max_frozen, 0, 64),
                ("l15_retries", self.l15_retries, 0, 10),
                ("l2_every", self.l2_every, 1, 10_000),
                ("l2_window", self.l2_window, 0, 10_000),
                ("max_l2_rounds", self.max_l2_rounds, 0, 10_000),
                ("code_retries", self.code_retries, 0, 5)):
            if not low <= value <= high:
                raise FieldError(f"outer.{name}", f"must be in [{low}, {high}], got {value}")
        names = [m.name for m in self.mechanisms]
        if len(set(names)) != len(names):
            raise FieldError("outer.mechanisms", f"names a mechanism twice: {names}")
        for m in self.mechanisms:
            if not m.name.isidentifier():
                raise FieldError("outer.mechanisms", f"{m.name!r} is not a valid name")
            if len(m.source.encode()) > 64 << 10:
                raise FieldError("outer.mechanisms", f"{m.name}: source over 64 KiB")
        if any(not d.strip() or len(d) > 200 for d in self.explore_domains):
            raise FieldError("outer.explore_domains", "each must be 1-200 characters")
        if self.portfolio is not None:
            unknown = [a for a in self.portfolio if a not in OFFLINE_PROPOSERS]
            if unknown or len(set(self.portfolio)) != len(self.portfolio):
                raise FieldError("outer.portfolio_arms", f"must name distinct offline proposers "
                                 f"({', '.join(OFFLINE_PROPOSERS)}); got {self.portfolio}")
        if self.portfolio_lead and self.portfolio_lead not in OFFLINE_PROPOSERS:
            raise FieldError("outer.portfolio_lead", f"must name an offline proposer "
                             f"({', '.join(OFFLINE_PROPOSERS)}); got {self.portfolio_lead!r}")
        if self.portfolio_lead and ("2" not in self.levels or self.portfolio == ()):
            raise FieldError("outer.portfolio_lead", "needs Level 2's portfolio (level 2, "
                             "and not no_portfolio)")
        if len(self.library_prior_runs) > 1000 or any(
                not (r.startswith("run-") and 4 < len(r) <= 64 and r[4:].isalnum())
                for r in self.library_prior_runs):
            raise FieldError("outer.library_prior_runs", "at most 1000 run ids (run-<hex>)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OuterSettings:
        d = dict(raw)
        d["levels"] = tuple(d.get("levels", ("1",)))
        d["mechanisms"] = tuple(InitialMechanism(**m) for m in d.get("mechanisms", ()))
        d["explore_domains"] = tuple(d.get("explore_domains", ()))
        d["library_prior_runs"] = tuple(d.get("library_prior_runs", ()))
        if d.get("portfolio") is not None:
            d["portfolio"] = tuple(d["portfolio"])
        return cls(**d)


@dataclass(frozen=True)
class RunSettings:
    task: TaskSettings = field(default_factory=TaskSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    proposer: ProposerSettings = field(default_factory=ProposerSettings)
    budgets: Budgets = field(default_factory=Budgets)
    llm: LLMSettings = field(default_factory=LLMSettings)
    outer: OuterSettings = field(default_factory=OuterSettings)

    def uses_llm(self) -> bool:
        """Whether any level of this run calls the LLM (and so needs a provider)."""
        o = self.outer
        return (self.proposer.kind == "llm"
                or ("1.5" in o.levels and o.config_controller == "llm")
                or ("2" in o.levels and o.mechanism_source == "llm"))

    def validate(self) -> None:
        """Raise FieldError naming the first invalid field. Preset and knob names are
        checked against the task by the run manager."""
        t, s, p, b = self.task, self.search, self.proposer, self.budgets
        if not t.preset:
            raise FieldError("task.preset", "is required (e.g. surrogate, cpu-tiny)")
        if t.train_py is not None:
            if len(t.train_py.encode()) > 1 << 20:
                raise FieldError("task.train_py", "must be at most 1 MiB")
            try:
                compile(t.train_py, "train.py", "exec", dont_inherit=True)
            except SyntaxError as exc:
                raise FieldError("task.train_py", f"does not compile: {exc}") from None
        if t.data_ref and not t.data_ref.replace("-", "").replace("_", "").replace(
                ".", "").isalnum():
            raise FieldError("task.data_ref", f"must be a Docker volume name, got {t.data_ref!r}")
        if t.runtime not in RUNTIMES:
            raise FieldError("task.runtime", f"must be one of {', '.join(RUNTIMES)}, got "
                                             f"{t.runtime!r}")
        if not 0 <= s.seed < 2**63:
            raise FieldError("search.seed", "must be in [0, 2^63)")
        if not (math.isfinite(s.min_improvement) and 0 <= s.min_improvement < 1):
            raise FieldError("search.min_improvement", "must be in [0, 1)")
        if len(set(s.frozen_knobs)) != len(s.frozen_knobs):
            raise FieldError("search.frozen_knobs", "lists a knob twice")
        if p.kind in RENAMED_PROPOSERS:
            raise FieldError("proposer.kind", RENAMED_PROPOSERS[p.kind])
        if p.kind not in PROPOSERS:
            raise FieldError("proposer.kind", f"must be one of {PROPOSERS}, got {p.kind!r}")
        if s.keep_rule not in KEEP_RULES:
            raise FieldError("search.keep_rule", f"must be one of {KEEP_RULES}")
        if not 2 <= s.noise_seeds <= 32:
            raise FieldError("search.noise_seeds", f"must be in [2, 32], got {s.noise_seeds}")
        if not (math.isfinite(s.noise_margin) and 0 <= s.noise_margin <= 20):
            raise FieldError("search.noise_margin", "must be in [0, 20] (units of sigma)")
        if not 0 <= s.final_seeds <= 32:
            raise FieldError("search.final_seeds", f"must be in [0, 32] (0: no final "
                                                   f"check), got {s.final_seeds}")
        if s.pruner not in PRUNERS:
            raise FieldError("search.pruner", f"must be one of {PRUNERS}, got {s.pruner!r}")
        if not 0 <= s.prune_startup_trials <= 1000:
            raise FieldError("search.prune_startup_trials", "must be in [0, 1000]")
        if not 0 <= s.prune_min_step <= 1 << 53:
            raise FieldError("search.prune_min_step", "must be in [0, 2^53]")
        if not 2 <= s.prune_reduction <= 16:
            raise FieldError("search.prune_reduction", "must be in [2, 16]")
        if not 1 <= s.batch_size <= MAX_BATCH:
            raise FieldError("search.batch_size", f"must be in [1, {MAX_BATCH}]")
        if p.mode not in MODES:
            raise FieldError("proposer.mode", f"must be one of {MODES}, got {p.mode!r}")
        if p.mode == "code" and p.kind != "llm":
            raise FieldError("proposer.mode", "code edits need the llm proposer")
        if not 0 <= p.max_invalid_retries <= 10:
            raise FieldError("proposer.max_invalid_retries", "must be in [0, 10]")
        if not 0 <= p.max_fix_attempts <= 10:
            raise FieldError("proposer.max_fix_attempts", "must be in [0, 10]")
        if not 0 <= p.history_trials <= 200:
            raise FieldError("proposer.history_trials", "must be in [0, 200]")
        self.outer.validate(p.kind)
        if self.uses_llm():
            self.llm.validate()
        if self.uses_llm() and self.llm.provider == "replay" and self.outer.levels != ("1",):
            raise FieldError("outer.levels", "a replay re-runs level 1 only")
        if not 1 <= p.max_changes <= 16:
            raise FieldError("proposer.max_changes", f"must be in [1, 16], got {p.max_changes}")
        if not (math.isfinite(p.step) and 0 < p.step <= 4):
            raise FieldError("proposer.step", f"must be in (0, 4], got {p.step}")
        if not 1 <= b.max_trials <= MAX_TRIALS:
            raise FieldError("budgets.max_trials",
                             f"must be in [1, {MAX_TRIALS}], got {b.max_trials}")
        if not (math.isfinite(b.max_wall_seconds) and b.max_wall_seconds >= 0):
            raise FieldError("budgets.max_wall_seconds",
                             f"must be >= 0 (0: unlimited), got {b.max_wall_seconds}")
        if b.max_llm_tokens < 0:
            raise FieldError("budgets.max_llm_tokens", "must be >= 0 (0: unlimited)")
        if not (math.isfinite(b.max_llm_cost_usd) and b.max_llm_cost_usd >= 0):
            raise FieldError("budgets.max_llm_cost_usd", "must be >= 0 (0: unlimited)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSettings:
        search = dict(raw.get("search", {}))
        search["frozen_knobs"] = tuple(search.get("frozen_knobs", ()))
        return cls(task=TaskSettings(**raw.get("task", {})),
                   search=SearchSettings(**search),
                   proposer=ProposerSettings(**raw.get("proposer", {})),
                   budgets=Budgets(**raw.get("budgets", {})),
                   llm=LLMSettings(**raw.get("llm", {})),
                   outer=OuterSettings.from_dict(raw.get("outer", {})))
