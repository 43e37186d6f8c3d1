"""An ablation: arms x repeats on one task, at equal trial and LLM budgets.

The definition (arms, seeds, budgets), the principal that drives it and the run id of
every (arm, repeat) cell live in one JSON file, `<state>/ablations/<id>/ablation.json`,
rewritten atomically after each change, so a killed driver resumes where it was
(runner.py).

Arms: A = L1, B = L1+1.5, C = L1+1.5+2, D = L1+2, and controls: one arm per offline
proposer that registers one (research/level1/offline/: `random_search`, true random
search over the typed ranges; `tpe`, `cmaes` and `sobol`, the field's offline
optimizers; Level 1 only), `A-sched` (A on C's batch schedule, no mechanisms) and
`C-noop` (C's levels with the library's no-op mechanism instead of Level 2). Without an
LLM, A-D use the offline `local` proposer (a (1+1) perturbation of the incumbent).
Repeat r of every arm uses the same seed (paired design); the final bests are
re-evaluated on fresh seeds that no search saw.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from controller.api import enums
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.research.level1 import offline
from controller.research.level2 import portfolio
from controller.research.tasks.manifest import load_task_dir
from controller.store import task_bundle

PROPOSER_ARMS = tuple(p for p in offline.all_proposers() if p.arm)  # Level 1, that proposer
ALL_ARMS = ("A", "B", "C", "D", *(p.name for p in PROPOSER_ARMS), "A-sched", "C-noop")
DEFAULT_ARMS = ("A", "B", "C", "D", *(p.name for p in PROPOSER_ARMS if p.default_arm),
                "C-noop")
RENAMED_ARMS = {"random": "arm 'random' is now 'random_search' (true random search over the "
                          "typed ranges; the old arm ran the local perturbation A runs)"}
CONTROL = "A"
FRESH_SEED_BASE = 1_000_000_000  # re-evaluation seeds: far from every search seed
SEED_STRIDE = 1000  # search seed of repeat r: seed + r * SEED_STRIDE


class ArmUnavailable(Exception):
    """An arm this controller or configuration cannot run; the message says why."""


@dataclass(frozen=True)
class Arm:
    name: str
    title: str
    levels: tuple[str, ...]
    proposer: str  # "llm" or an offline proposer's name
    batch_size: int = 1
    mechanisms: tuple[str, ...] = ()  # library mechanisms it starts with
    llm_outer: bool = False  # with an LLM: L1.5 and L2 ask it (else rule / library)

    @property
    def outer(self) -> bool:
        return self.levels != ("1",) or bool(self.mechanisms)


def catalogue(llm: bool, schedule_batch: int) -> tuple[dict[str, Arm], dict[str, str]]:
    """The arms and the reasons some are skipped (none today). Without an LLM every level
    runs its offline form (local proposer, rule-based L1.5, library mechanisms); the
    offline proposers' arms are offline either way."""
    p = "llm" if llm else "local"
    off = "" if llm else "offline: local proposer"
    l15 = "" if llm else ", rule-based L1.5"
    l2 = "" if llm else ", library L2"

    def note(text: str) -> str:
        return f" ({text})" if text else ""

    arms = {
        "A": Arm("A", "L1" + note(off), ("1",), p),
        "B": Arm("B", "L1 + L1.5" + note(off + l15), ("1", "1.5"), p, llm_outer=llm),
        "C": Arm("C", "L1 + L1.5 + L2" + note(off + l15 + l2), ("1", "1.5", "2"), p,
                 schedule_batch, llm_outer=llm),
        "D": Arm("D", "L1 + L2" + note(off + l2), ("1", "2"), p, schedule_batch,
                 llm_outer=llm),
        **{k.name: Arm(k.name, k.arm, ("1",), k.name) for k in PROPOSER_ARMS},
        "A-sched": Arm("A-sched", "control: A on C's batch schedule, no mechanisms",
                       ("1",), p, schedule_batch),
        "C-noop": Arm("C-noop", "control: C's levels with the no-op mechanism",
                      ("1", "1.5"), p, schedule_batch, mechanisms=("noop",), llm_outer=llm),
    }
    skipped: dict[str, str] = {}
    return arms, skipped


@dataclass
class Cell:
    """One run of the ablation: an arm's repeat, or a re-evaluation."""

    run_id: str = ""
    state: str = ""  # the run's last seen state
    value: float | None = None  # re-evaluations: mean val_bpb over the fresh seeds
    sigma: float | None = None  # re-evaluations: std over the fresh seeds
    source_sha: str = ""  # re-evaluations: which train.py was evaluated


@dataclass
class AblationSpec:
    id: str
    task: str
    repeats: int
    trials: int
    seed: int = 0
    fresh_seeds: int = 3
    max_llm_tokens: int = 0
    llm: dict[str, str] | None = None  # provider, model, base_url; None: offline
    schedule_batch: int = 1
    # The outer levels' cadence in every arm that runs them (0: the run's default).
    l15_every: int = 0
    l2_every: int = 0
    l2_window: int = 0
    # Surrogate only: trials scored in the controller from the knobs (TaskSpec.in_process),
    # no sandbox job per trial; mechanisms still run in their sandboxes.
    in_process: bool = False
    # Offline Level 2's library bandit learns from these runs' verdicts (an earlier
    # ablation's, `l2_prior`), never from this ablation's own repeats.
    l2_prior: str = ""
    prior_runs: list[str] = field(default_factory=list)
    # ... and its portfolio is led by the winner of that ablation's fixed strategies.
    portfolio_lead: str = ""
    arms: list[Arm] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)  # "A/3" -> run
    reeval: dict[str, Cell] = field(default_factory=dict)  # "A/3", "baseline/3"
    created_at: float = 0.0
    finished_at: float = 0.0
    # The principal whose token drives it (PrincipalService.WhoAmI): its runs are that
    # principal's, so only that principal resumes it.
    principal: str = ""

    def seed_of(self, repeat: int) -> int:
        return self.seed + repeat * SEED_STRIDE

    def fresh_seed_of(self, repeat: int) -> int:
        """First of the `fresh_seeds` consecutive seeds repeat r is re-evaluated on."""
        return FRESH_SEED_BASE + self.seed + repeat * SEED_STRIDE

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AblationSpec:
        d = dict(raw)
        d["arms"] = [Arm(**{**a, "levels": tuple(a["levels"]),
                            "mechanisms": tuple(a.get("mechanisms", ()))})
                     for a in d.get("arms", [])]
        d["cells"] = {k: Cell(**v) for k, v in d.get("cells", {}).items()}
        d["reeval"] = {k: Cell(**v) for k, v in d.get("reeval", {}).items()}
        return cls(**d)


def prior_runs(earlier: AblationSpec) -> list[str]:
    """The runs of an earlier ablation whose Level 2 judged mechanisms (the arms with
    level 2 or a starting set): what a later ablation's library bandit may learn from."""
    judged = {a.name for a in earlier.arms if "2" in a.levels or a.mechanisms}
    runs = [c.run_id for key, c in sorted(earlier.cells.items())
            if key.rpartition("/")[0] in judged and c.run_id and c.state == "succeeded"]
    if not runs:
        raise ValueError(f"ablation {earlier.id} has no finished run with Level 2 to learn "
                         "from")
    return runs[:1000]


def new_id() -> str:
    return f"abl-{time.strftime('%Y%m%d')}-{secrets.token_hex(3)}"


def folder(state_dir: Path, ablation_id: str) -> Path:
    if not ablation_id.replace("-", "").isalnum():
        raise ValueError(f"not an ablation id: {ablation_id!r}")
    return state_dir / "ablations" / ablation_id


def save(state_dir: Path, spec: AblationSpec) -> None:
    """Atomic and fsynced: a kill leaves the previous or the new file, never half."""
    path = folder(state_dir, spec.id) / "ablation.json"
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one: its user's only
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ablation.")
    with os.fdopen(fd, "w") as handle:
        json.dump(spec.to_json(), handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(state_dir: Path, ablation_id: str) -> AblationSpec:
    path = folder(state_dir, ablation_id) / "ablation.json"
    try:
        return AblationSpec.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"no ablation {ablation_id} under {state_dir}/ablations "
                                "(pass the --state-dir it was made with)") from None


def _enum_name(table: Mapping[str, int], value: str, enum: Any) -> str:
    """An arm's internal value as the API's enum name (the request is built as JSON)."""
    try:
        return str(enum.Name(enums.to_enum(table, value)))
    except enums.UnknownValue as exc:
        raise ArmUnavailable(f"this controller's API cannot express {exc}") from None


def _outer_supported() -> bool:
    return "outer" in rpb.CreateRunRequest.DESCRIPTOR.fields_by_name


def task_dir(spec: AblationSpec) -> Path | None:
    """The task directory `--task` named, or None for a preset name."""
    path = Path(spec.task)
    return path if path.is_dir() else None


def _task(spec: AblationSpec, source: str | None = None) -> rpb.TaskSpec:
    """The request's task: a preset by name, or the task directory's files, read here
    (the controller may be on another host); `source` replaces its editable file (a
    task directory's baseline is that file, so a best is re-evaluated this way)."""
    folder = task_dir(spec)
    if folder is None:
        return rpb.TaskSpec(preset=spec.task, in_process=spec.in_process,
                            train_py=source.encode() if source is not None else b"")
    files = task_bundle.read_task_dir(folder)
    if source is not None:
        files[load_task_dir(folder).editable] = source.encode()
    return rpb.TaskSpec(task_files=files)


def portfolio_lead(earlier: AblationSpec) -> str:
    """The offline strategy whose arm of an earlier ablation gained most on fresh seeds,
    over every repeat (portfolio.lead_from): the lead a later ablation's portfolio arms
    take; "" when fewer than two such arms have re-evaluated repeats or none gained."""
    fixed = {a.name: a.proposer for a in earlier.arms if a.levels == ("1",)
             and not a.mechanisms and a.proposer in offline.names()}
    gains = []
    for key, cell in earlier.reeval.items():
        arm, _, repeat = key.rpartition("/")
        base = earlier.reeval.get(f"baseline/{repeat}")
        if arm in fixed and cell.value is not None and base is not None and \
                base.value is not None:
            gains.append((fixed[arm], base.value - cell.value))
    return portfolio.lead_from(gains, per_strategy=len(gains)) or ""


def run_request(spec: AblationSpec, arm: Arm, repeat: int) -> rpb.CreateRunRequest:
    """The CreateRun request of one cell. Raises ArmUnavailable."""
    if arm.proposer == "llm" and spec.llm is None:
        raise ArmUnavailable(f"arm {arm.name} needs an LLM proposer; none is configured")
    raw: dict[str, Any] = {
        "task": {},
        # No end-of-run check per run: the ablation re-evaluates every best itself.
        "search": {"seed": str(spec.seed_of(repeat)), "batchSize": arm.batch_size,
                   "finalSeeds": 0},
        # No lessons from earlier runs: repeats must be independent.
        "proposer": {"kind": _enum_name(enums.PROPOSER_KINDS, arm.proposer, rpb.ProposerKind),
                     "noMemory": True},
        "budgets": {"maxTrials": spec.trials, "maxLlmTokens": str(spec.max_llm_tokens)},
    }
    if spec.llm is not None:
        raw["llm"] = {k: v for k, v in {"provider": spec.llm.get("provider", ""),
                                        "model": spec.llm.get("model", ""),
                                        "baseUrl": spec.llm.get("base_url", "")}.items() if v}
    if arm.outer:
        if not _outer_supported():
            raise ArmUnavailable(f"arm {arm.name} needs levels {'+'.join(arm.levels)}, "
                                 "which this controller's API does not offer yet")
        raw["outer"] = {"levels": [_enum_name(enums.LEVELS, lv, rpb.Level)
                                   for lv in arm.levels],
                        "mechanisms": [{"name": m} for m in arm.mechanisms],
                        "configController": "llm" if arm.llm_outer else "rule",
                        "mechanismSource": "llm" if arm.llm_outer else "library",
                        **{key: value for key, value in (
                            ("l15EveryTrials", spec.l15_every),
                            ("l2EveryTrials", spec.l2_every),
                            ("l2WindowTrials", spec.l2_window)) if value}}
        if spec.prior_runs and "2" in arm.levels:
            raw["outer"]["libraryPriorRuns"] = list(spec.prior_runs)
        if spec.portfolio_lead and "2" in arm.levels:
            raw["outer"]["portfolioLead"] = spec.portfolio_lead
    try:
        request = rpb.CreateRunRequest()
        json_format.ParseDict(raw, request)
        request.task.CopyFrom(_task(spec))
        return request
    except json_format.ParseError as exc:
        raise ArmUnavailable(f"arm {arm.name}: this controller's API cannot express it "
                             f"({exc})") from None


def reeval_request(spec: AblationSpec, source: str, repeat: int) -> rpb.CreateRunRequest:
    """A run whose baseline is `source`, measured on the repeat's fresh seeds (the noise
    rule runs the baseline on `fresh_seeds` seeds) and that stops right after it."""
    return rpb.CreateRunRequest(
        task=_task(spec, source),
        search=rpb.SearchSettings(seed=spec.fresh_seed_of(repeat),
                                  keep_rule=rpb.KEEP_RULE_NOISE,
                                  noise_seeds=max(spec.fresh_seeds, 2), final_seeds=0),
        proposer=rpb.ProposerSettings(kind=rpb.PROPOSER_KIND_LOCAL, no_memory=True),
        budgets=rpb.Budgets(max_trials=1, max_wall_seconds=1e-3))
