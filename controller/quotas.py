"""Quotas per principal and fair-share weights: the configuration model, and the refusal.

Set in the config file, admins included unless exempted:

    [quotas.default]              # every principal
    runs = 2                      # runs active at once (refused at CreateRun/ResumeRun)
    slots = 2                     # sandbox slots its jobs hold at once (jobs wait)
    gpu_slots = 1                 # GPU slots its jobs hold at once (jobs wait)
    stored_bytes = "10GiB"        # its runs' folders: task copies, artifacts (refused)
    llm_tokens_per_day = 2000000  # LLM tokens in any 24 hours (the run's calls stop)
    llm_usd_per_day = 20.0        # LLM cost in any 24 hours (the run's calls stop)
    weight = 1.0                  # its share of the slots when principals wait for them

    [quotas.principals.alice]     # overrides the defaults key by key
    runs = 8
    weight = 2.0

    [quotas.principals.ops]
    exempt = true                 # no quota applies (the weight still does)

Environment: BILEVEL_QUOTAS__DEFAULT__RUNS=2, BILEVEL_QUOTAS__PRINCIPALS__ALICE__RUNS=8.
A key left unset is unlimited. A refusal is a CapacityError (RESOURCE_EXHAUSTED) whose
resource is `quotas.<principal>.<quota>`, with the limit, the use and the request in
its message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.errors import FieldError
from controller.principals import check_name
from controller.research.errors import CapacityError

PREFIX = "quotas."
DEFAULT_TABLE = "quotas.default"
PRINCIPALS_TABLE = "quotas.principals"
# field -> config kind (controller/config_file.py's kinds)
KINDS: dict[str, str] = {
    "runs": "int", "slots": "int", "gpu_slots": "int", "stored_bytes": "bytes",
    "llm_tokens_per_day": "int", "llm_usd_per_day": "float", "weight": "float",
}
PRINCIPAL_KINDS: dict[str, str] = {**KINDS, "exempt": "bool"}
_LLM_FIX = ("in use: the calls of the last 24 hours and those in flight; requested: this "
            "call's bound. The run pauses: resume it with `bilevel resume RUN` once the "
            "window has room")
# What a principal at its limit can do about it, by quota.
_FIX = {
    "runs": "wait for one of its runs to finish, or cancel one",
    "stored_bytes": "delete finished runs (`bilevel delete RUN`)",
    "llm_tokens_per_day": _LLM_FIX,
    "llm_usd_per_day": _LLM_FIX,
}


@dataclass(frozen=True)
class QuotaLimits:
    """One principal's limits (None: unlimited) and fair-share weight."""

    runs: int | None = None
    slots: int | None = None
    gpu_slots: int | None = None
    stored_bytes: int | None = None
    llm_tokens_per_day: int | None = None
    llm_usd_per_day: float | None = None
    weight: float = 1.0

    def validate(self, table: str) -> None:
        for name in ("runs", "stored_bytes", "llm_tokens_per_day"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise FieldError(f"{table}.{name}", f"must be >= 0 (0 allows none), got {value}")
        for name in ("slots", "gpu_slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(f"{table}.{name}", f"must be >= 1, got {value}: its jobs "
                                 "would wait forever (set runs = 0 to keep a principal from "
                                 "running anything)")
        usd = self.llm_usd_per_day
        if usd is not None and not (math.isfinite(usd) and usd >= 0):
            raise FieldError(f"{table}.llm_usd_per_day", f"must be a number >= 0, got {usd}")
        if not (math.isfinite(self.weight) and 0 < self.weight <= 1000):
            raise FieldError(f"{table}.weight", f"must be in (0, 1000], got {self.weight}")


@dataclass(frozen=True)
class Quotas:
    """Every principal's limits: `default`, overridden key by key by `principals[name]`
    (which holds only the keys its table sets); `exempt` principals have no limits."""

    default: QuotaLimits = field(default_factory=QuotaLimits)
    principals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    exempt: frozenset[str] = frozenset()

    def of(self, principal: str) -> QuotaLimits:
        limits = replace(self.default, **self.principals.get(principal, {}))
        if principal in self.exempt:
            return QuotaLimits(weight=limits.weight)
        return limits

    def origin(self, principal: str, quota: str) -> str:
        """The config key that sets `principal`'s `quota`."""
        if quota in self.principals.get(principal, {}):
            return f"{PRINCIPALS_TABLE}.{principal}.{quota}"
        return f"{DEFAULT_TABLE}.{quota}"

    def validate(self) -> None:
        self.default.validate(DEFAULT_TABLE)
        for name in self.principals:
            self.of(name).validate(f"{PRINCIPALS_TABLE}.{name}")

    def refusal(self, principal: str, quota: str, used: float, requested: float,
                unit: str = "") -> CapacityError:
        """The error for a request of `requested` that `principal`, using `used`, may
        not make under its `quota`."""
        limit = getattr(self.of(principal), quota)
        return CapacityError(subject(principal, quota), (
            f"quota {subject(principal, quota)} exceeded: limit {_num(limit)}{unit}, in use "
            f"{_num(used)}{unit}, requested {_num(requested)}{unit} (set by "
            f"{self.origin(principal, quota)}); {_FIX.get(quota, 'wait')}"))


def subject(principal: str, quota: str) -> str:
    """What a refusal names: `quotas.<principal>.<quota>`."""
    return f"{PREFIX}{principal}.{quota}"


def _num(value: float | None) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(int(value)) if value is not None else "unlimited"


def kind_of(key: str) -> str | None:
    """The config kind of a quota key (`quotas.default.runs`,
    `quotas.principals.alice.weight`), or None when `key` is not one."""
    table, _, name = key.rpartition(".")
    if table == DEFAULT_TABLE:
        return KINDS.get(name)
    if table.startswith(PRINCIPALS_TABLE + ".") and len(table) > len(PRINCIPALS_TABLE) + 1:
        return PRINCIPAL_KINDS.get(name)
    return None


def unknown_reason(key: str) -> str:
    """Why `key`, under quotas., is no setting."""
    table, _, name = key.rpartition(".")
    if table == DEFAULT_TABLE or table.startswith(PRINCIPALS_TABLE + "."):
        known = KINDS if table == DEFAULT_TABLE else PRINCIPAL_KINDS
        return f"unknown quota {name!r} in [{table}]; use {', '.join(known)}"
    return (f"quota settings go in [{DEFAULT_TABLE}] or [{PRINCIPALS_TABLE}.<name>], "
            f"with keys {', '.join(PRINCIPAL_KINDS)}")


def from_values(values: Mapping[str, Any]) -> Quotas:
    """Quotas from typed settings {`quotas.…` key: value} (None values: unset)."""
    default: dict[str, Any] = {}
    principals: dict[str, dict[str, Any]] = {}
    exempt: set[str] = set()
    for key, value in values.items():
        if value is None:
            continue
        table, _, name = key.rpartition(".")
        if table == DEFAULT_TABLE:
            default[name] = value
            continue
        principal = table.removeprefix(PRINCIPALS_TABLE + ".")
        try:
            check_name(principal)
        except ValueError as exc:
            raise FieldError(key, str(exc)) from None
        if name == "exempt":
            if value:
                exempt.add(principal)
            principals.setdefault(principal, {})
        else:
            principals.setdefault(principal, {})[name] = value
    quotas = Quotas(QuotaLimits(**default), principals, frozenset(exempt))
    quotas.validate()
    return quotas
