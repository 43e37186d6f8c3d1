"""The JSON that crosses the mechanism boundary, as typed dataclasses with to/from JSON.

Mechanism code (in the sandbox) sees only plain JSON; the controller sees only these
types. Everything coming back is untrusted: `from_json` checks the shape and, for
proposals, every knob name and value against the typed search space, raising
`WireError` with the offending path so a failure record can say what was wrong.

Shapes (all keys always present):

    knob     {"name", "kind": "int"|"float"|"choice", "low", "high", "log",
              "power_of_two", "choices": [...]}
    proposal {"changes": {knob: value}, "description": str}
    trial    {"index", "changes", "config": {knob: value} (the full candidate),
              "description", "status": "keep"|"discard"|"crash", "val_bpb": float|null,
              "incumbent_val_bpb": float|null (the best it was compared against),
              "crash": str (the crash message, "" if none)}
    state    {"space": {"knobs": [knob...]}, "incumbent": {knob: value},
              "best_val_bpb": float|null, "history": [trial...] (oldest first),
              "trial_index": int (the trial being proposed), "seed": int}
    verdict  {"action": "accept"} | {"action": "reject", "reason": str}
             | {"action": "replace", "proposal": proposal, "reason": str}

Tuple-valued choices travel as JSON lists and are turned back into tuples here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.research.level1.space import Knob, ProposalError, SearchSpace
from trainer.knobs import KnobValue

TRIAL_STATUSES = ("keep", "discard", "crash")
ACTIONS = ("accept", "reject", "replace")
Json = Any
MAX_MESSAGE = 1000


class WireError(ValueError):
    """Untrusted JSON does not have the documented shape; `path` points at the problem."""

    def __init__(self, path: str, message: str) -> None:
        # Bounded: the message quotes untrusted values and ends up in failure records.
        super().__init__(f"{path[:200]}: {message[:MAX_MESSAGE]}")
        self.path = path[:200]


@contextmanager
def _shape(path: str) -> Iterator[None]:
    """Any error while reading untrusted JSON at `path` becomes a WireError: a missing
    key, a wrong type, a number out of range are the sender's fault, not a crash."""
    try:
        yield
    except WireError:
        raise
    except KeyError as exc:
        raise WireError(path, f"missing key {exc}") from None
    except (TypeError, ValueError, OverflowError, AttributeError, RecursionError) as exc:
        raise WireError(path, f"{type(exc).__name__}: {exc}") from None


def _dict(raw: Json, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise WireError(path, f"must be an object, got {type(raw).__name__}")
    return raw


def _number_or_none(raw: Json, path: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise WireError(path, f"must be a finite number or null, got {raw!r}")
    return float(raw)


def _tuples(value: Json) -> Json:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _lists(value: Any) -> Json:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def knob_to_json(knob: Knob) -> dict[str, Json]:
    return {"name": knob.name, "kind": knob.kind, "low": knob.low, "high": knob.high,
            "log": knob.log, "power_of_two": knob.power_of_two,
            "choices": [_lists(c) for c in knob.choices]}


def knob_from_json(raw: Json) -> Knob:
    d = _dict(raw, "knob")
    with _shape("knob"):
        return Knob(name=str(d["name"]), kind=d["kind"], low=float(d["low"]),
                    high=float(d["high"]), log=bool(d["log"]),
                    power_of_two=bool(d["power_of_two"]),
                    choices=tuple(_tuples(c) for c in d["choices"]))


def space_to_json(space: SearchSpace) -> dict[str, Json]:
    return {"knobs": [knob_to_json(k) for k in space.knobs]}


def space_from_json(raw: Json) -> SearchSpace:
    with _shape("space"):
        return SearchSpace(tuple(knob_from_json(k) for k in _dict(raw, "space")["knobs"]))


def changes_from_json(raw: Json, space: SearchSpace, path: str) -> dict[str, KnobValue]:
    """Knob changes checked against the space (names, types, ranges)."""
    changes = {name: _tuples(value) for name, value in _dict(raw, path).items()}
    try:
        space.check(changes)
    except ProposalError as exc:
        raise WireError(f"{path}.{exc.knob}", str(exc)) from exc
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an unhashable value
        raise WireError(path, f"{type(exc).__name__}: {exc}") from None
    return changes


def config_from_json(raw: Json, path: str) -> dict[str, KnobValue]:
    return {name: _tuples(value) for name, value in _dict(raw, path).items()}


@dataclass(frozen=True)
class MechanismProposal:
    """A candidate change to the incumbent, as mechanisms suggest or rewrite it."""

    changes: dict[str, KnobValue]
    description: str = ""

    def to_json(self) -> dict[str, Json]:
        return {"changes": {k: _lists(v) for k, v in self.changes.items()},
                "description": self.description}

    @classmethod
    def from_json(cls, raw: Json, space: SearchSpace, path: str = "proposal") -> MechanismProposal:
        d = _dict(raw, path)
        extra = set(d) - {"changes", "description"}
        if extra:
            raise WireError(path, f"unknown keys {sorted(extra)}")
        if "changes" not in d:
            raise WireError(path, "missing 'changes'")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise WireError(f"{path}.description", "must be a string")
        return cls(changes_from_json(d["changes"], space, f"{path}.changes"),
                   description[:2000])


@dataclass(frozen=True)
class TrialView:
    """One finished trial as mechanisms see it."""

    index: int
    changes: dict[str, KnobValue]
    config: dict[str, KnobValue]
    status: Literal["keep", "discard", "crash"]
    val_bpb: float | None
    incumbent_val_bpb: float | None = None
    description: str = ""
    crash: str = ""

    def to_json(self) -> dict[str, Json]:
        return {"index": self.index,
                "changes": {k: _lists(v) for k, v in self.changes.items()},
                "config": {k: _lists(v) for k, v in self.config.items()},
                "description": self.description, "status": self.status,
                "val_bpb": self.val_bpb, "incumbent_val_bpb": self.incumbent_val_bpb,
                "crash": self.crash}

    @classmethod
    def from_json(cls, raw: Json, path: str = "trial") -> TrialView:
        d = _dict(raw, path)
        status = d.get("status")
        if status not in TRIAL_STATUSES:
            raise WireError(f"{path}.status", f"must be one of {TRIAL_STATUSES}")
        with _shape(path):
            return cls._from_dict(d, status, path)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], status: Any, path: str) -> TrialView:
        return cls(index=int(d["index"]), changes=config_from_json(d["changes"], path),
                   config=config_from_json(d.get("config", {}), path), status=status,
                   val_bpb=_number_or_none(d.get("val_bpb"), f"{path}.val_bpb"),
                   incumbent_val_bpb=_number_or_none(d.get("incumbent_val_bpb"), path),
                   description=str(d.get("description", ""))[:2000],
                   crash=str(d.get("crash", ""))[:2000])


@dataclass(frozen=True)
class LoopState:
    """What every hook is shown: the space, the incumbent and the recent history."""

    space: SearchSpace
    incumbent: dict[str, KnobValue]
    best_val_bpb: float | None
    trial_index: int
    seed: int
    history: tuple[TrialView, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Json]:
        return {"space": space_to_json(self.space),
                "incumbent": {k: _lists(v) for k, v in self.incumbent.items()},
                "best_val_bpb": self.best_val_bpb,
                "history": [t.to_json() for t in self.history],
                "trial_index": self.trial_index, "seed": self.seed}

    @classmethod
    def from_json(cls, raw: Json) -> LoopState:
        d = _dict(raw, "state")
        with _shape("state"):
            return cls._from_dict(d)

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(space=space_from_json(d["space"]),
                   incumbent=config_from_json(d["incumbent"], "state.incumbent"),
                   best_val_bpb=_number_or_none(d.get("best_val_bpb"), "state.best_val_bpb"),
                   trial_index=int(d["trial_index"]), seed=int(d["seed"]),
                   history=tuple(TrialView.from_json(t, f"state.history[{i}]")
                                 for i, t in enumerate(d.get("history", []))))


@dataclass(frozen=True)
class FilterVerdict:
    """A filter's answer about one proposal."""

    action: Literal["accept", "reject", "replace"]
    reason: str = ""
    proposal: MechanismProposal | None = None

    @classmethod
    def from_json(cls, raw: Json, space: SearchSpace) -> FilterVerdict:
        d = _dict(raw, "verdict")
        action = d.get("action")
        reason = d.get("reason", "")
        if action not in ACTIONS:
            raise WireError("verdict.action", f"must be one of {ACTIONS}, got {action!r}")
        if not isinstance(reason, str):
            raise WireError("verdict.reason", "must be a string")
        if action == "reject" and not reason.strip():
            raise WireError("verdict.reason", "a reject must say why")
        if action == "replace":
            proposal = MechanismProposal.from_json(d.get("proposal"), space, "verdict.proposal")
            return cls("replace", reason[:2000], proposal)
        return cls(action, reason[:2000])
