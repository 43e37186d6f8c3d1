"""Plain records the store reads and writes: runs, trials and run events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RunState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # the LLM failed for good; state kept, `bilevel resume` continues
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (RunState.RUNNING, RunState.PAUSED)


class TrialStatus(enum.StrEnum):
    """Karpathy's results.tsv statuses, and `pruned`: stopped early by the run's pruner
    on its own reported curve (never kept; research/level1/pruners.py)."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    PRUNED = "pruned"


class EventKind(enum.StrEnum):
    RUN_STARTED = "run_started"
    TRIAL_PROPOSED = "trial_proposed"
    TRIAL_STARTED = "trial_started"
    TRIAL_PROGRESS = "trial_progress"  # a running trial's reported curve grew (untrusted)
    TRIAL_FINISHED = "trial_finished"
    NEW_BEST = "new_best"
    RUN_FINISHED = "run_finished"
    RUN_PAUSED = "run_paused"
    CONFIG_ADJUSTED = "config_adjusted"  # Level 1.5 applied (or refused) an adjustment
    MECHANISM = "mechanism"  # Level 2: proposed, gated, activated, kept, reverted, ...


@dataclass(frozen=True)
class RunRecord:
    id: str
    state: RunState
    settings: dict[str, Any]
    created_at: float
    updated_at: float
    trials_done: int = 0
    baseline_val_bpb: float | None = None
    best_val_bpb: float | None = None
    best_trial: int | None = None
    last_status: TrialStatus | None = None
    stop_reason: str = ""
    elapsed_seconds: float = 0.0
    llm_tokens_used: int = 0
    summary: str = ""
    noise_sigma: float | None = None  # std of val_bpb over the baseline's seeds
    llm_cost_usd: float = 0.0
    owner: str = "shared"  # the principal it belongs to (controller/principals.py)


@dataclass(frozen=True)
class Cursor:
    """Where the next page of ListRuns starts: after this run (newest first)."""

    created_at: float
    run_id: str


@dataclass(frozen=True)
class TrialRecord:
    run_id: str
    index: int
    finished: bool
    attempt: int
    description: str
    changes: dict[str, Any]
    status: TrialStatus | None = None
    val_bpb: float | None = None
    memory_gb: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    job_status: str = ""
    exception: dict[str, Any] | None = None
    seconds: float = 0.0
    hypothesis: str = ""
    parent: int | None = None  # the trial whose train.py this candidate edits
    fix_of: int | None = None  # set when this trial is an attempt to fix a crashed one
    proposal_id: str = ""  # links the trial to its LLM calls
    started_at: float = 0.0  # evaluation start and end (unix time)
    ended_at: float = 0.0
    llm_tokens: int = 0  # tokens of the calls that made this trial's proposal
    llm_cost_usd: float = 0.0
    proposal_source: str = ""  # what made the proposal that ran (TrialFinish's field)
    node: str = ""  # the Ray node id(s) its jobs ran on; "" on the controller's engine
    # The portfolio arm (Level 2, research/level2/portfolio.py) that proposed it, and the
    # probability that arm had of being chosen; "" and None outside a portfolio draw.
    arm: str = ""
    arm_probability: float | None = None
    # Why the LLM gave no usable proposal, when the fallback proposer made this trial's.
    llm_failure: str = ""


@dataclass(frozen=True)
class TrialMeta:
    """Where a trial came from, recorded when it begins."""

    hypothesis: str = ""
    parent: int | None = None
    fix_of: int | None = None
    proposal_id: str = ""
    arm: str = ""  # the portfolio arm that proposed it, and its probability
    arm_probability: float | None = None
    llm_failure: str = ""  # the LLM gave no usable proposal; the fallback's ran


@dataclass(frozen=True)
class TrialFinish:
    """What the loop learned from one trial, written in one transaction with its events."""

    index: int
    status: TrialStatus
    val_bpb: float | None
    memory_gb: float
    metrics: dict[str, Any]
    job_status: str
    exception: dict[str, Any] | None
    seconds: float
    new_best: bool
    tokens_used: int = 0  # added to the run's total (proposers that do not meter calls)
    started_at: float = 0.0
    ended_at: float = 0.0
    llm_tokens: int = 0  # the proposal's own usage (already in the run's total)
    llm_cost_usd: float = 0.0
    noise_sigma: float | None = None  # set by the baseline under the noise-aware rule
    # Mechanism hook calls behind this trial (HookRecord.to_json()) and the states the
    # mechanisms saved after observing it; stored in the same transaction.
    mechanism_calls: tuple[dict[str, Any], ...] = ()
    mechanism_states: dict[str, Any] | None = None
    # "baseline", "proposer", or "mechanism:<name>" when that mechanism's suggestion
    # became the trial; "+filter" is appended when a filter's replacement ran.
    proposal_source: str = ""
    node: str = ""  # where its jobs ran (Ray node ids, comma-joined; "" = local engine)


@dataclass(frozen=True)
class EventRecord:
    run_id: str
    seq: int
    time: float
    kind: EventKind
    payload: dict[str, Any]


RUN_HINT = "list runs with `bilevel runs`"  # what a NotFoundError for a run suggests


class NotFoundError(KeyError):
    """A run, trial or artifact does not exist. `resource` says which."""

    def __init__(self, resource: str, name: str, hint: str = "") -> None:
        super().__init__(f"{resource} {name!r} not found" + (f"; {hint}" if hint else ""))
        self.resource = resource
        self.name = name
        self.hint = hint

    def __str__(self) -> str:
        return str(self.args[0])
