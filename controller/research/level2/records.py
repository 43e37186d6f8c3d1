"""Records of hook calls: the proof that a mechanism ran and what it changed.

The loop stores one `HookRecord` per hook call on the trial it belongs to. A call is
*effective* only when it changed what ran: its suggestion became the trial, its filter
verdict changed the trial (a reject made the proposer try again, a replacement ran), its
prompt text reached a proposer that reads prompts. A suggestion the loop did not use, or
prompt text for a trial that a suggestion then took over, is *offered*; a filter verdict
that a later filter or the retry limit overrode is *superseded* - neither is effective
(research/level2/wiring.py re-labels them once the trial's proposal is settled).
`summarize_hook_calls` reports calls and effective calls per mechanism; one with calls but none
effective ran and had nothing to do, one with no call was never asked - different
findings, reported apart, and neither is evidence that the mechanism helps.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.sandbox.spec import ExceptionInfo


class Effect(enum.StrEnum):
    CONTEXT_ADDED = "context_added"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REPLACED = "replaced"
    SUGGESTED = "suggested"
    OBSERVED = "observed"
    SAVED = "saved"
    LOADED = "loaded"
    STARTED = "started"
    NO_EFFECT = "no_effect"  # e.g. empty context text, no suggestions
    OFFERED = "offered"  # suggested or prompt text given, but not what ran
    SUPERSEDED = "superseded"  # a reject or replace that did not change the trial
    FAILED = "failed"


EFFECTIVE = frozenset({Effect.CONTEXT_ADDED, Effect.REJECTED, Effect.REPLACED,
                       Effect.SUGGESTED})


class FailureReason(enum.StrEnum):
    """Why a mechanism was disabled."""

    RAISED = "raised"  # the hook raised; the traceback is in `exception`
    TIMEOUT = "timeout"  # past its per-call limit; the session was killed
    OOM = "oom"
    DIED = "died"  # the container exited
    OUTPUT_LIMIT = "output_limit"
    PROTOCOL = "protocol"  # a reply that is not the protocol
    INVALID_RESULT = "invalid_result"  # well-formed JSON of the wrong shape or values
    LOAD_FAILED = "load_failed"  # the module did not load or defines no usable class
    SANDBOX_ERROR = "sandbox_error"  # the engine failed; not the mechanism's fault


@dataclass(frozen=True)
class Failure:
    mechanism: str
    hook: str
    reason: FailureReason
    message: str
    exception: ExceptionInfo | None = None
    stderr: str = ""

    def to_json(self) -> dict[str, Any]:
        exc = self.exception
        return {"mechanism": self.mechanism, "hook": self.hook, "reason": self.reason.value,
                "message": self.message, "stderr": self.stderr[-4000:],
                "exception": None if exc is None else {
                    "type": exc.type, "message": exc.message,
                    "frames": [vars(f) for f in exc.frames]}}

    def traceback_text(self) -> str:
        if self.exception is None:
            return ""
        lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {f.line}'
                 for f in self.exception.frames]
        return "\n".join(["Traceback (most recent call last):", *lines,
                          f"{self.exception.type}: {self.exception.message}"])


@dataclass(frozen=True)
class HookRecord:
    """One hook call on one mechanism, and what it did."""

    mechanism: str
    hook: str
    trial_index: int | None
    seconds: float
    effect: Effect
    detail: str = ""  # the context text, the reject/replace reason, ...
    proposals: tuple[dict[str, Any], ...] = ()  # replacement or suggestions, as JSON
    failure: Failure | None = None
    # Answers left out without disabling the mechanism, each with why (e.g. a suggestion
    # that names a knob Level 1.5 froze after the mechanism was written).
    skipped: tuple[str, ...] = ()

    @property
    def effective(self) -> bool:
        return self.effect in EFFECTIVE

    def to_json(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "hook": self.hook,
                "trial_index": self.trial_index, "seconds": round(self.seconds, 6),
                "effect": self.effect.value, "effective": self.effective,
                "detail": self.detail, "proposals": list(self.proposals),
                "failure": None if self.failure is None else self.failure.to_json(),
                "skipped": list(self.skipped)}


@dataclass
class MechanismSummary:
    mechanism: str
    calls: int = 0
    effective: int = 0
    failures: int = 0
    seconds: float = 0.0
    by_hook: dict[str, int] = field(default_factory=dict)
    effects: dict[str, int] = field(default_factory=dict)

    @property
    def injected(self) -> bool:
        """It ran AND changed something the loop did."""
        return self.effective > 0


def summarize_hook_calls(records: Iterable[HookRecord],
              mechanisms: Iterable[str] = ()) -> dict[str, MechanismSummary]:
    """Per mechanism: calls, effective calls, failures. Names in `mechanisms` with no
    record at all appear with zero calls, so an uncalled mechanism is visible."""
    out = {name: MechanismSummary(name) for name in mechanisms}
    for rec in records:
        s = out.setdefault(rec.mechanism, MechanismSummary(rec.mechanism))
        s.calls += 1
        s.effective += rec.effective
        s.failures += rec.effect is Effect.FAILED
        s.seconds += rec.seconds
        s.by_hook[rec.hook] = s.by_hook.get(rec.hook, 0) + 1
        s.effects[rec.effect.value] = s.effects.get(rec.effect.value, 0) + 1
    return out
