"""The mechanism interface: one module, one class, optional hooks, JSON in and out.

A mechanism is ONE Python module defining ONE class with a no-argument constructor and
any of these methods (hooks); the inner loop calls them at fixed points:

    context(state) -> str
        Text added to the proposer's prompt ("" adds nothing).
    filter(proposal, state) -> verdict
        {"action": "accept"} | {"action": "reject", "reason": str}
        | {"action": "replace", "proposal": proposal, "reason": str}.
        Filters run in activation order; a replacement is what the next one sees.
    suggest(state) -> [proposal]
        Candidates of its own (design points, crossovers, restarts).
    observe(trial, state) -> None
        Learn from a finished trial; `state` is the one the trial was proposed from.
    save_state() -> JSON / load_state(data) -> None
        So a run can resume: a fresh instance given load_state(save_state()) must
        continue exactly as the old one would have.

Every argument and result is JSON (shapes in mechanisms/wire.py). Determinism: hooks
must depend only on their arguments and the instance's own state; randomness comes
from `sdk.rng(state, salt)`, and the host reseeds the global `random` (and numpy's)
from the state's seed and trial index before each call. Mechanism code may import
only the modules of `GateSettings.allowed_imports`, including `mechanisms.sdk`.

It runs in its own sandbox container (no network, read-only root, small memory, few
pids, a per-call time limit); anything it prints goes to a captured stderr.

What the static gate (controller/research/level2/gates.py) is and is not. It is a cheap first filter
that reads the source without running it: imports only from the allowed list, no
eval/exec/open/getattr-style names, no dunder or private attributes, none of numpy's
ways to files, raw memory or C (`numpy.ctypeslib`, `ndarray.ctypes`, `fromfile`,
`memmap`, `load`/`save`/`tofile`, `numpy.lib`, ...), no `__array_interface__`-style
special methods. It gives a Level-2 proposer a clear reason early. It is NOT a security
boundary: Python offers more indirections than a syntax check can list, and a mechanism
that slips past it is contained by the sandbox alone - its container (no network, no
host files, read-only root, an unprivileged uid, limits) and the host's validation of every
reply (a forged or malformed line on the protocol fd disables the mechanism; see
tests/test_mechanism_deny.py, which runs such code past the gate under runc and runsc).
"""

from __future__ import annotations

from typing import Any, Protocol

HOOKS = ("context", "filter", "suggest", "observe", "save_state", "load_state")
# Hooks whose answer can change what the loop does; a mechanism needs one of them.
ACTING_HOOKS = ("context", "filter", "suggest")


class MechanismClass(Protocol):
    """For type checkers and readers; a mechanism defines any subset of these."""

    def context(self, state: Any) -> str: ...

    def filter(self, proposal: Any, state: Any) -> Any: ...

    def suggest(self, state: Any) -> list[Any]: ...

    def observe(self, trial: Any, state: Any) -> None: ...

    def save_state(self) -> Any: ...

    def load_state(self, data: Any) -> None: ...
