"""Level 1.5, the config loop: every `l15_every` trials a controller reads a compact
trace and returns bounded adjustments - knobs to freeze and unfreeze (capped per cycle
and in total), a strategy label and guidance text for the proposer.

Two controllers, one contract: `llm` asks the run's LLM (invalid answers go back with
the reason, `l15_retries` times, then the cycle is skipped and recorded); `rule` is the
offline, deterministic controller, so `--levels 1,1.5` runs without an API key: it
freezes knobs changed at least twice in the last two windows without a single keep,
unfreezes knobs frozen two cycles ago, and labels the strategy from the keep counts.
Every answer passes the same validation; every cycle is a `config_adjusted` event.

The rule controller does not make the offline search better: its only lever on an
offline proposer (which reads no guidance) is freezing knobs, and on the surrogate, 30
paired seeds x 30 trials of the local proposer, L1 + rule-based L1.5 ended +0.0006
val_bpb (noise-free) behind L1 alone, 95 % CI [-0.0013, +0.0024]; stricter freeze
thresholds (3 or 4 tries without a keep) came out at +0.00002 and -0.0001, both far
from significant (`python -m bench.level15_offline`). So `bilevel run` leaves Level 1.5
out of offline runs unless `--config-controller rule` asks for it.

A "restart" strategy continues from the incumbent best (the loop always proposes from
it); the event names that trial, never a discarded proposal: restarting from the last
proposed (often discarded) config with an empty history can fake a gain by itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from controller.llm.errors import LLMBudgetSpent, LLMError, LLMUnavailable
from controller.llm.limits import max_tokens_for
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from controller.research.level1.answers import FENCE
from controller.research.level1.proposer import ProposerContext
from controller.research.settings import OuterSettings
from controller.research.task import GPT, Objective
from controller.store.mechanisms import MechanismLog
from controller.store.records import EventKind, TrialRecord, TrialStatus

if TYPE_CHECKING:
    from controller.research.level1.loop import InnerLoop

log = structlog.get_logger(__name__)
STRATEGIES = ("explore", "exploit", "refine", "restart")
MAX_GUIDANCE = 600
MIN_FREE_KNOBS = 2
STATE_KEY = "level15"


class AdjustmentError(ValueError):
    """An answer outside the contract; the message is fed back to the LLM."""


@dataclass(frozen=True)
class Adjustment:
    freeze: tuple[str, ...] = ()
    unfreeze: tuple[str, ...] = ()
    strategy: str = "explore"
    guidance: str = ""


@dataclass
class ConfigState:
    frozen: list[str] = field(default_factory=list)  # Level 1.5's own, in freeze order
    frozen_at: dict[str, int] = field(default_factory=dict)  # knob -> cycle
    strategy: str = ""
    guidance: str = ""
    last_cycle_trial: int = 0
    cycles: int = 0


def validate(raw: Any, state: ConfigState, knobs: Sequence[str],
             outer: OuterSettings) -> Adjustment:
    """Check an answer against the caps; `knobs` are those Level 1.5 may freeze."""
    if not isinstance(raw, dict):
        raise AdjustmentError("answer with one JSON object")
    extra = set(raw) - {"freeze", "unfreeze", "strategy", "guidance"}
    if extra:
        raise AdjustmentError(f"unknown keys {sorted(extra)}")
    freeze, unfreeze = raw.get("freeze", []), raw.get("unfreeze", [])
    for key, names in (("freeze", freeze), ("unfreeze", unfreeze)):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AdjustmentError(f'"{key}" must be a list of knob names')
        if len(set(names)) != len(names):
            raise AdjustmentError(f'"{key}" names a knob twice')
    if len(freeze) > outer.max_freeze:
        raise AdjustmentError(f"freeze at most {outer.max_freeze} knobs per cycle")
    if len(unfreeze) > outer.max_unfreeze:
        raise AdjustmentError(f"unfreeze at most {outer.max_unfreeze} knobs per cycle")
    for name in freeze:
        if name not in knobs:
            raise AdjustmentError(f"{name} is not a knob that can be frozen "
                                  f"(knobs: {', '.join(knobs)})")
        if name in state.frozen:
            raise AdjustmentError(f"{name} is already frozen")
    for name in unfreeze:
        if name not in state.frozen:
            raise AdjustmentError(f"{name} is not frozen (frozen: {state.frozen or 'none'})")
    after = [k for k in state.frozen if k not in unfreeze] + list(freeze)
    if len(after) > outer.max_frozen:
        raise AdjustmentError(f"at most {outer.max_frozen} knobs may be frozen at once")
    if len(knobs) - len(after) < MIN_FREE_KNOBS:
        raise AdjustmentError(f"leave at least {MIN_FREE_KNOBS} knobs free")
    strategy = raw.get("strategy", "")
    if strategy not in STRATEGIES:
        raise AdjustmentError(f'"strategy" must be one of {STRATEGIES}')
    guidance = raw.get("guidance", "")
    if not isinstance(guidance, str) or len(guidance) > MAX_GUIDANCE:
        raise AdjustmentError(f'"guidance" must be a string of at most {MAX_GUIDANCE} chars')
    return Adjustment(tuple(freeze), tuple(unfreeze), strategy, " ".join(guidance.split()))


def knob_stats(trials: Sequence[TrialRecord]) -> dict[str, tuple[int, int]]:
    """knob -> (trials that changed it, of which kept)."""
    stats: dict[str, tuple[int, int]] = {}
    for t in trials:
        for name in t.changes:
            tries, kept = stats.get(name, (0, 0))
            stats[name] = (tries + 1, kept + (t.status is TrialStatus.KEEP))
    return stats


class RuleController:
    label = "rule-based config controller (offline, deterministic; no LLM)"

    def decide(self, trace: list[TrialRecord], state: ConfigState, knobs: Sequence[str],
               outer: OuterSettings, index: int, feedback: list[str]) -> Any:
        window = outer.l15_every
        recent, last = trace[-2 * window:], trace[-window:]
        unfreeze = [k for k in state.frozen if state.frozen_at.get(k, 0) <= state.cycles - 2]
        unfreeze = unfreeze[:outer.max_unfreeze]
        room = min(outer.max_freeze, outer.max_frozen - len(state.frozen) + len(unfreeze),
                   len(knobs) - len(state.frozen) + len(unfreeze) - MIN_FREE_KNOBS)
        stats = knob_stats(recent)
        useless = sorted((k for k, (tries, kept) in stats.items()
                          if tries >= 2 and kept == 0 and k in knobs and k not in state.frozen
                          and k not in unfreeze), key=lambda k: (-stats[k][0], k))
        freeze = useless[:max(room, 0)]
        keeps_last = sum(t.status is TrialStatus.KEEP for t in last)
        keeps_recent = sum(t.status is TrialStatus.KEEP for t in recent)
        strategy = ("exploit" if keeps_last else "restart" if len(recent) >= 2 * window
                    and not keeps_recent else "explore")
        guidance = {"exploit": "Recent changes paid off: refine around the incumbent.",
                    "explore": "No keep in the last window: try knobs not changed recently.",
                    "restart": "No keep in two windows: restart from the incumbent best with "
                               "bolder moves on other knobs."}[strategy]
        if freeze:
            guidance += f" Frozen for now (changed without a keep): {', '.join(freeze)}."
        return {"freeze": freeze, "unfreeze": unfreeze, "strategy": strategy,
                "guidance": guidance}


class LLMController:
    label = "LLM config controller"
    SYSTEM = ("You steer a hyperparameter search. Every few trials you read its trace and "
              "adjust its configuration: knobs to freeze or unfreeze, a strategy label, and "
              "short guidance for the proposer. Answer with one JSON object only.")

    def __init__(self, provider: Provider, run_id: str, max_tokens: int,
                 objective: Objective = GPT) -> None:
        self.provider = provider
        self.run_id = run_id
        self.max_tokens = max_tokens_for("config", max_tokens)
        self.objective = objective  # the trace shows the task's metric, in its direction
        self.transcript: list[dict[str, Any]] = []

    def decide(self, trace: list[TrialRecord], state: ConfigState, knobs: Sequence[str],
               outer: OuterSettings, index: int, feedback: list[str]) -> Any:
        o = self.objective
        lines = [f"- trial {t.index}: {t.status.value if t.status else '?'}, {o.metric} "
                 f"{o.shown(t.val_bpb) if t.val_bpb is not None else '-'}, changes "
                 f"{json.dumps(t.changes, sort_keys=True)[:200]}" for t in trace[-20:]]
        user = "\n".join([
            "# Trace (oldest first)", *lines,
            f"# Configuration\nfrozen: {state.frozen or 'none'}; strategy: "
            f"{state.strategy or 'none'}; knobs you may freeze: {', '.join(knobs)}",
            f"# Limits\nfreeze at most {outer.max_freeze} and unfreeze at most "
            f"{outer.max_unfreeze} knobs; at most {outer.max_frozen} frozen at once; leave "
            f"{MIN_FREE_KNOBS} free; strategy one of {', '.join(STRATEGIES)} (restart "
            "continues from the incumbent best); guidance at most "
            f"{MAX_GUIDANCE} characters.",
            *(f"# Your previous answer was rejected\n{f}" for f in feedback[-1:]),
            '# Answer\n{"freeze": [...], "unfreeze": [...], "strategy": "...", '
            '"guidance": "..."}'])
        request = LLMRequest(self.SYSTEM, (ChatMessage("user", user),), self.max_tokens,
                             None, CallTag(self.run_id, index, len(feedback), "level1.5",
                                           f"l15-{index}"))
        text = self.provider.complete(request).text
        self.transcript.append({"trial": index, "prompt": user, "response": text})
        fenced = FENCE.search(text)
        body = fenced.group(1) if fenced else text
        start, end = body.find("{"), body.rfind("}")
        try:
            return json.loads(body[start:end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError as exc:
            raise AdjustmentError(f"the JSON does not parse: {exc}") from None


class ConfigLoop:
    """Runs the cycles on the loop's coordinator thread, after a judged trial."""

    def __init__(self, loop: InnerLoop, controller: RuleController | LLMController) -> None:
        self.loop = loop
        self.controller = controller
        self.outer = loop.settings.outer
        self.log = MechanismLog(loop.store)
        raw = self.log.outer_state(loop.run_id, STATE_KEY)
        self.state = ConfigState(**raw) if raw else ConfigState()

    def attach(self) -> None:
        self.loop.after_trial.append(self.after_trial)
        self.loop.context_hooks.append(self.context)
        if self.state.frozen:  # a resumed run keeps its frozen knobs
            self.loop.set_frozen(self.state.frozen)

    def context(self, ctx: ProposerContext) -> str:
        if not self.state.strategy:
            return ""
        return f"[config loop] strategy: {self.state.strategy}. {self.state.guidance}"

    def after_trial(self, index: int) -> None:
        if index - self.state.last_cycle_trial >= self.outer.l15_every:
            self.cycle(index)

    def freezable(self) -> list[str]:
        own = set(self.loop.settings.search.frozen_knobs)
        return [k.name for k in self.loop.task.search_space().knobs if k.name not in own]

    def cycle(self, index: int) -> None:
        run_id, state = self.loop.run_id, self.state
        trace = [t for t in self.loop.store.trials(run_id) if t.finished and t.index > 0]
        knobs = self.freezable()
        feedback: list[str] = []
        adjustment: Adjustment | None = None
        error = ""
        for _ in range(1 + self.outer.l15_retries):
            try:
                raw = self.controller.decide(trace, state, knobs, self.outer, index, feedback)
                adjustment = validate(raw, state, knobs, self.outer)
                break
            except AdjustmentError as exc:
                feedback.append(str(exc))
            except (LLMError, LLMUnavailable, LLMBudgetSpent) as exc:
                error = f"the LLM failed: {exc}"
                break
        state.cycles += 1
        state.last_cycle_trial = index
        payload: dict[str, Any] = {"trial": index, "controller": self.controller.label,
                                   "rejected": feedback, "error": error}
        if adjustment is None:
            payload |= {"applied": False, "frozen": list(state.frozen)}
            log.warning("level 1.5 cycle skipped", trial=index, rejected=feedback, error=error)
        else:
            for name in adjustment.unfreeze:
                state.frozen.remove(name)
                state.frozen_at.pop(name, None)
            for name in adjustment.freeze:
                state.frozen.append(name)
                state.frozen_at[name] = state.cycles
            state.strategy, state.guidance = adjustment.strategy, adjustment.guidance
            self.loop.set_frozen(state.frozen)
            best = self.loop.store.get_run(run_id).best_trial
            payload |= {"applied": True, **asdict(adjustment), "frozen": list(state.frozen),
                        "restart_from_trial": best if adjustment.strategy == "restart"
                        else None}
            log.info("level 1.5 adjusted", trial=index, freeze=adjustment.freeze,
                     unfreeze=adjustment.unfreeze, strategy=adjustment.strategy)
        self.log.set_outer_state(run_id, STATE_KEY, asdict(state))
        self.loop.store.append_event(run_id, EventKind.CONFIG_ADJUSTED, payload)
