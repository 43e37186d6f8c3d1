"""What mechanism code may import: helpers over the JSON state (see mechanisms/wire.py).

Shipped into the sandbox next to each mechanism (as `mechanisms/sdk.py`), so built-in
and generated mechanisms share one tested implementation of the fiddly parts: distance
between configurations on typed knobs, moving a value by a step in normalised space
while staying valid (ints, powers of two, ranges), and building verdicts. Standard
library only; nothing here touches files, processes or the network.
"""

from __future__ import annotations

import math
import random
from typing import Any

Json = Any
Config = dict[str, Any]


def knobs(state: Json) -> dict[str, Json]:
    """Knob descriptions by name."""
    return {k["name"]: k for k in state["space"]["knobs"]}


def rng(state: Json, salt: str) -> random.Random:
    """A generator determined by the run's seed, the trial index and `salt`."""
    return random.Random(f"{state['seed']}:{state['trial_index']}:{salt}")


def log_scaled(knob: Json) -> bool:
    """Whether a numeric knob is measured on a log scale: log knobs and powers of two
    (with a positive range)."""
    return bool(knob["log"] or knob["power_of_two"]) and float(knob["low"]) > 0


def unit(knob: Json, value: Any) -> float:
    """A numeric value mapped to [0, 1] over its range (log scale for log knobs and
    powers of two, so doubling a batch is the same step anywhere in its range)."""
    low, high = float(knob["low"]), float(knob["high"])
    if high <= low:
        return 0.0
    v = min(max(float(value), low), high)
    if log_scaled(knob):
        return (math.log(v) - math.log(low)) / (math.log(high) - math.log(low))
    return (v - low) / (high - low)


def from_unit(knob: Json, u: float) -> Any:
    """The valid value of `knob` nearest to position `u` in [0, 1] of its range (the
    inverse of `unit`)."""
    u = min(max(float(u), 0.0), 1.0)
    low, high = float(knob["low"]), float(knob["high"])
    if log_scaled(knob):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    return snap(knob, value)


def snap(knob: Json, value: float) -> Any:
    """Clamp to the range and round to the knob's type (powers of two stay so)."""
    low, high = float(knob["low"]), float(knob["high"])
    value = min(max(value, low), high)
    if knob["power_of_two"]:
        exp = round(math.log2(max(value, 1.0)))
        while 2**exp > high:
            exp -= 1
        while 2**exp < low:
            exp += 1
        return int(2**exp)
    if knob["kind"] == "int":
        return int(min(max(round(value), math.ceil(low)), math.floor(high)))
    return float(f"{value:.4g}") if low <= float(f"{value:.4g}") <= high else value


def knob_distance(knob: Json, a: Any, b: Any) -> float:
    """0..1 per knob: range-normalised for numbers, 0/1 for choices."""
    if knob["kind"] == "choice":
        return 0.0 if a == b else 1.0
    return abs(unit(knob, a) - unit(knob, b))


def distance(state: Json, a: Config, b: Config) -> float:
    """Euclidean distance of two configurations over the knobs both set."""
    table = knobs(state)
    total = 0.0
    for name, knob in table.items():
        if name in a and name in b:
            total += knob_distance(knob, a[name], b[name]) ** 2
    return math.sqrt(total)


def proposal_config(state: Json, proposal: Json) -> Config:
    """The full configuration a proposal would run: the incumbent plus its changes."""
    return {**state["incumbent"], **proposal["changes"]}


def trial_config(state: Json, trial: Json) -> Config:
    """A trial's full configuration (its own record, else incumbent plus changes)."""
    return dict(trial["config"]) if trial.get("config") else \
        {**state["incumbent"], **trial["changes"]}


def step(knob: Json, value: Any, scale: float, direction: float) -> Any:
    """Move `value` by `scale` of the normalised range in `direction` (+1/-1)."""
    if knob["kind"] == "choice":
        return value
    moved = from_unit(knob, unit(knob, value) + scale * direction)
    if moved == value and knob["power_of_two"]:
        moved = snap(knob, float(value) * (2.0 if direction > 0 else 0.5))
    return moved


def changes_from(state: Json, config: Config) -> dict[str, Any]:
    """The knobs of `config` that differ from the incumbent."""
    return {k: v for k, v in config.items() if state["incumbent"].get(k) != v}


def proposal(changes: dict[str, Any], description: str) -> Json:
    return {"changes": changes, "description": description}


def accept() -> Json:
    return {"action": "accept"}


def reject(reason: str) -> Json:
    return {"action": "reject", "reason": reason}


def replace(new: Json, reason: str) -> Json:
    return {"action": "replace", "proposal": new, "reason": reason}


def unseen(state: Json, after: int) -> list[Json]:
    """History trials with an index above `after`, oldest first. A mechanism activated
    mid-run (or resumed) learns from these first, so it acts on the trials before it
    rather than starting blind."""
    return sorted((t for t in state["history"] if t["index"] > after), key=lambda t: t["index"])


def ran(trial: Json) -> bool:
    """Whether the trial's configuration ran: a proposal refused by validation is recorded
    as a crash (ProposalError) although its configuration never ran."""
    return not str(trial["crash"]).startswith("ProposalError")


def step_size(state: Json, config: Config) -> float:
    """How far `config` moves from the incumbent: the scale this proposal searches at."""
    return distance(state, config, state["incumbent"])


def top_trials(state: Json, k: int) -> list[Json]:
    """The k best finished trials of the history by val_bpb (lower is better)."""
    done = [t for t in state["history"] if t["status"] != "crash" and t["val_bpb"] is not None]
    return sorted(done, key=lambda t: (t["val_bpb"], t["index"]))[:k]
