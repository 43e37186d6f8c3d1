"""The active mechanisms of a run: one sandboxed session each, called at fixed points.

`MechanismSet` is what the inner loop calls. Each hook method calls that hook on every
active mechanism that defines it, in activation order, checks every answer against the
documented shapes (mechanisms/wire.py) and returns the combined value with one
`HookRecord` per call. Any failure - an exception, a hang past the per-call limit, an
OOM, a malformed answer - disables that mechanism (its session is killed, a `Failure`
with the traceback is recorded) and the call carries on with the others: a broken
mechanism never stops the loop.

`skip` leaves named mechanisms out of one call (Level 2's "without" arm). A suggestion or
replacement naming a knob in `frozen` (frozen by Level 1.5 after the mechanism learned
the space) is skipped and recorded, not treated as a malformed answer: the freeze is the
loop's doing, not the mechanism's fault.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from controller.research.level1.space import SearchSpace
from controller.research.level2.records import Effect, Failure, FailureReason, HookRecord
from controller.sandbox.backend import MechanismSession, SandboxBackend
from controller.sandbox.backend_config import SandboxUnavailable
from controller.sandbox.replies import DeathReason, SessionDead
from controller.sandbox.spec import JobSpec, Limits
from mechanisms import sdk
from mechanisms.interface import HOOKS
from mechanisms.wire import FilterVerdict, LoopState, MechanismProposal, TrialView, WireError

T = TypeVar("T")
SDK_SOURCE = Path(sdk.__file__).read_bytes()
# Run with -c, so the working dir (/job/work: mechanism.py and mechanisms/sdk.py) is first
# on sys.path; a job's environment may not set PYTHONPATH (JobSpec.validate).
HOST_COMMAND = ("python3", "-c", "import runpy; runpy.run_path("
                "'/opt/bilevel/mechanism_host.py', run_name='__main__')", "mechanism.py")


@dataclass(frozen=True)
class MechanismSettings:
    """Sandbox bounds of one mechanism session and the per-call limits."""

    runtime: str = "runc"
    memory_bytes: int = 256 << 20
    cpus: float = 0.5
    pids: int = 32
    output_bytes: int = 256 << 10
    call_timeout_seconds: float = 2.0
    start_timeout_seconds: float = 30.0  # interpreter start and module import
    max_suggestions: int = 16
    max_context_chars: int = 4000
    lifetime_seconds: float = 86400.0  # the reaper removes a session after this

    def job_spec(self, source: str) -> JobSpec:
        return JobSpec(
            files={"mechanism.py": source.encode(), "mechanisms/__init__.py": b"",
                   "mechanisms/sdk.py": SDK_SOURCE},
            command=HOST_COMMAND, runtime=self.runtime,
            labels={"io.bilevel.kind": "mechanism"},
            limits=Limits(wall_seconds=self.lifetime_seconds, memory_bytes=self.memory_bytes,
                          cpus=self.cpus, pids=self.pids, output_bytes=self.output_bytes,
                          tmp_bytes=8 << 20, disk_bytes=8 << 20, returned_file_bytes=0))


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """A hook's combined value and the record of every call that produced it."""

    value: T
    records: list[HookRecord]


@dataclass(frozen=True)
class Suggestion:
    mechanism: str
    proposal: MechanismProposal


@dataclass
class _Active:
    name: str
    session: MechanismSession
    hooks: tuple[str, ...]


class _Disabled(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


_DEATH = {DeathReason.TIMEOUT: FailureReason.TIMEOUT, DeathReason.OOM: FailureReason.OOM,
          DeathReason.DIED: FailureReason.DIED, DeathReason.PROTOCOL: FailureReason.PROTOCOL,
          DeathReason.OUTPUT_LIMIT: FailureReason.OUTPUT_LIMIT,
          DeathReason.SANDBOX_ERROR: FailureReason.SANDBOX_ERROR}


class MechanismSet:
    """Active mechanisms of one run, in activation order. One caller at a time."""

    def __init__(self, executor: SandboxBackend, space: SearchSpace,
                 settings: MechanismSettings | None = None) -> None:
        self.executor = executor
        self.space = space
        self.settings = settings or MechanismSettings()
        self._active: dict[str, _Active] = {}
        self.disabled: dict[str, Failure] = {}
        self.frozen: frozenset[str] = frozenset()  # knobs frozen out of `space` for now
        self._skipped: list[str] = []  # answers skipped by the call being judged

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._active)

    def hooks(self, name: str) -> tuple[str, ...]:
        return self._active[name].hooks

    def activate(self, name: str, source: str, saved_state: Any = None) -> HookRecord:
        """Start `source` in its own sandbox and (optionally) restore its state. The
        record's effect is STARTED, or FAILED with the reason it was not activated."""
        if name in self._active:
            raise ValueError(f"mechanism {name!r} is already active")
        started = time.monotonic()
        try:
            session = self.executor.open_session(self.settings.job_spec(source))
        except SandboxUnavailable as exc:
            failure = Failure(name, "start", FailureReason.SANDBOX_ERROR, str(exc))
            return self._failed(name, "start", None, started, failure)
        mech = _Active(name, session, ())
        try:
            described = self._invoke(mech, "describe", [], self.settings.start_timeout_seconds)
            mech.hooks = _hooks(name, described)
            self._active[name] = mech
            if saved_state is not None and "load_state" in mech.hooks:
                self._invoke(mech, "load_state", [saved_state])
        except _Disabled as exc:
            session.close()
            failure = exc.failure
            if failure.hook == "describe" and failure.reason is FailureReason.RAISED:
                failure = Failure(name, "describe", FailureReason.LOAD_FAILED,
                                  failure.message, failure.exception, failure.stderr)
            return self._failed(name, failure.hook, None, started, failure)
        return HookRecord(name, "start", None, time.monotonic() - started, Effect.STARTED,
                          detail=f"hooks: {', '.join(mech.hooks)}; start "
                                 f"{session.start_seconds:.3f} s")

    def context(self, state: LoopState, skip: Collection[str] = ()) -> Outcome[str]:
        """Prompt text from every mechanism, each part headed by its name."""
        parts: list[str] = []
        records = self._each("context", [state.to_json()], state.trial_index,
                             lambda name, result: self._context(name, result, parts),
                             skip=skip)
        return Outcome("\n\n".join(parts), records)

    def filter(self, proposal: MechanismProposal, state: LoopState,
               skip: Collection[str] = ()) -> Outcome[MechanismProposal | None]:
        """Pass the proposal through each filter in turn; None once one rejects it."""
        current: list[MechanismProposal | None] = [proposal]
        records: list[HookRecord] = []
        payload = state.to_json()
        for name in list(self._active):
            if current[0] is None:
                break
            records += self._each("filter", [current[0].to_json(), payload], state.trial_index,
                                  lambda n, r: self._verdict(n, r, current), only=name,
                                  skip=skip)
        return Outcome(current[0], records)

    def suggest(self, state: LoopState, skip: Collection[str] = ()) -> Outcome[list[Suggestion]]:
        found: list[Suggestion] = []
        records = self._each("suggest", [state.to_json()], state.trial_index,
                             lambda name, result: self._suggestions(name, result, found),
                             skip=skip)
        return Outcome(found, records)

    def observe(self, trial: TrialView, state: LoopState) -> Outcome[None]:
        """Show each mechanism a finished trial and the state it was proposed from."""
        records = self._each("observe", [trial.to_json(), state.to_json()], trial.index,
                             lambda name, result: (Effect.OBSERVED, "", ()))
        return Outcome(None, records)

    def save_states(self) -> Outcome[dict[str, Any]]:
        """Each mechanism's save_state() JSON, for `activate(..., saved_state=)`."""
        saved: dict[str, Any] = {}

        def keep(name: str, result: Any) -> tuple[Effect, str, tuple[dict[str, Any], ...]]:
            saved[name] = result
            return Effect.SAVED, "", ()

        records = self._each("save_state", [], None, keep)
        return Outcome(saved, records)

    def load_states(self, saved: dict[str, Any]) -> Outcome[None]:
        """Restore mechanisms already active from `save_states().value`."""
        records: list[HookRecord] = []
        for name, data in saved.items():
            records += self._each("load_state", [data], None,
                                  lambda n, r: (Effect.LOADED, "", ()), only=name)
        return Outcome(None, records)

    def deactivate(self, name: str) -> None:
        mech = self._active.pop(name, None)
        if mech is not None:
            mech.session.close()

    def close(self) -> None:
        for name in list(self._active):
            self.deactivate(name)

    def __enter__(self) -> MechanismSet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one call, its checks and its record ------------------------------------------

    def _each(self, hook: str, args: list[Any], trial_index: int | None,
              judge: Callable[[str, Any], tuple[Effect, str, tuple[dict[str, Any], ...]]],
              only: str | None = None, skip: Collection[str] = ()) -> list[HookRecord]:
        records: list[HookRecord] = []
        for name, mech in list(self._active.items()):
            if hook not in mech.hooks or (only is not None and name != only) or name in skip:
                continue
            started = time.monotonic()
            self._skipped = []
            try:
                result = self._invoke(mech, hook, args)
                try:
                    effect, detail, proposals = judge(name, result)
                except (WireError, TypeError, ValueError, KeyError) as exc:
                    raise _Disabled(Failure(name, hook, FailureReason.INVALID_RESULT,
                                            f"{hook} returned an invalid result: {exc}")) from exc
            except _Disabled as exc:
                records.append(self._failed(name, hook, trial_index, started, exc.failure))
                continue
            records.append(HookRecord(name, hook, trial_index, time.monotonic() - started,
                                      effect, detail, proposals,
                                      skipped=tuple(self._skipped)))
        return records

    def _invoke(self, mech: _Active, hook: str, args: list[Any],
                timeout: float | None = None) -> Any:
        limit = timeout or self.settings.call_timeout_seconds
        try:
            reply = mech.session.call(hook, args, limit)
        except SessionDead as dead:
            raise _Disabled(Failure(mech.name, hook, _DEATH[dead.reason], dead.detail,
                                    stderr=dead.stderr)) from dead
        if reply.ok:
            return reply.result
        assert reply.error is not None
        reason = {"MemoryError": FailureReason.OOM, "NotJSON": FailureReason.INVALID_RESULT,
                  "ReplyTooLarge": FailureReason.INVALID_RESULT}.get(reply.error.type,
                                                                      FailureReason.RAISED)
        raise _Disabled(Failure(mech.name, hook, reason,
                                f"{hook} raised {reply.error.type}: {reply.error.message}",
                                reply.error, mech.session.stderr(settle_seconds=0.1)))

    def _failed(self, name: str, hook: str, trial_index: int | None, started: float,
                failure: Failure) -> HookRecord:
        mech = self._active.pop(name, None)
        if mech is not None:
            mech.session.close()
        self.disabled[name] = failure
        return HookRecord(name, hook, trial_index, time.monotonic() - started, Effect.FAILED,
                          failure.message, failure=failure)

    # -- judging answers ----------------------------------------------------------------

    def _context(self, name: str, result: Any,
                 parts: list[str]) -> tuple[Effect, str, tuple[dict[str, Any], ...]]:
        if not isinstance(result, str):
            raise TypeError(f"context must return a string, got {type(result).__name__}")
        text = result.strip()
        if not text:
            return Effect.NO_EFFECT, "", ()
        cap = self.settings.max_context_chars
        if len(text) > cap:
            text = text[:cap] + " [truncated]"
        parts.append(f"[{name}] {text}")
        return Effect.CONTEXT_ADDED, text, ()

    def _frozen_in(self, raw: Any, path: str) -> bool:
        """True (and noted) when an answer's proposal names a frozen knob."""
        changes = raw.get("changes") if isinstance(raw, dict) else None
        touched = sorted(k for k in changes if k in self.frozen) \
            if isinstance(changes, dict) else []
        if touched:
            self._skipped.append(f"{path} skipped: it changes {', '.join(touched)[:300]}, "
                                 "frozen by Level 1.5")
        return bool(touched)

    def _verdict(self, name: str, result: Any, current: list[MechanismProposal | None]
                 ) -> tuple[Effect, str, tuple[dict[str, Any], ...]]:
        if isinstance(result, dict) and result.get("action") == "replace" and \
                self._frozen_in(result.get("proposal"), "replacement"):
            return Effect.ACCEPTED, "replacement skipped (frozen knob); proposal kept", ()
        verdict = FilterVerdict.from_json(result, self.space)
        before = current[0]
        if verdict.action == "reject":
            current[0] = None
            return Effect.REJECTED, verdict.reason, ()
        if verdict.action == "replace" and verdict.proposal is not None and \
                before is not None and verdict.proposal.changes != before.changes:
            current[0] = verdict.proposal
            return Effect.REPLACED, verdict.reason, (verdict.proposal.to_json(),)
        return Effect.ACCEPTED, verdict.reason, ()

    def _suggestions(self, name: str, result: Any, found: list[Suggestion]
                     ) -> tuple[Effect, str, tuple[dict[str, Any], ...]]:
        if not isinstance(result, list):
            raise TypeError(f"suggest must return a list, got {type(result).__name__}")
        if len(result) > self.settings.max_suggestions:
            raise ValueError(f"{len(result)} suggestions, over the limit of "
                             f"{self.settings.max_suggestions}")
        proposals = [MechanismProposal.from_json(p, self.space, f"suggest[{i}]")
                     for i, p in enumerate(result)
                     if not self._frozen_in(p, f"suggest[{i}]")]
        found += [Suggestion(name, p) for p in proposals]
        if not proposals:
            return Effect.NO_EFFECT, "; ".join(self._skipped)[:500], ()
        return (Effect.SUGGESTED, f"{len(proposals)} candidate(s)",
                tuple(p.to_json() for p in proposals))


def _hooks(name: str, described: Any) -> tuple[str, ...]:
    hooks = described.get("hooks") if isinstance(described, dict) else None
    if not isinstance(hooks, list) or not hooks or not all(h in HOOKS for h in hooks):
        raise _Disabled(Failure(name, "describe", FailureReason.PROTOCOL,
                                f"describe answered {described!r}"))
    return tuple(hooks)
