"""The API's closed sets (proto enums) against the internal string values code beyond the
API keeps. Light to import (the generated messages and the offline proposers' registry,
which imports no optimizer library): the CLI builds requests with it.

UNSPECIFIED (0) means the field's default where it has one; a number no table lists (a
newer client, a hand-built message) is refused with the field named, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.research.level1 import offline

E = TypeVar("E", bound=int)

RUNTIMES: Mapping[str, spb.Runtime] = {"runc": spb.RUNTIME_RUNC, "runsc": spb.RUNTIME_RUNSC}
KEEP_RULES: Mapping[str, rpb.KeepRule] = {"greedy": rpb.KEEP_RULE_GREEDY,
                                          "noise": rpb.KEEP_RULE_NOISE}
PRUNERS: Mapping[str, rpb.Pruner] = {"none": rpb.PRUNER_NONE, "median": rpb.PRUNER_MEDIAN,
                                     "asha": rpb.PRUNER_ASHA}
# By name: proposer kind "random_search" is PROPOSER_KIND_RANDOM_SEARCH. The kinds are
# the offline registry's plus "llm"; test_proposer_registry fails when the proto's enum
# and the registry disagree.
PROPOSER_KINDS: Mapping[str, rpb.ProposerKind] = {
    name: rpb.ProposerKind.Value(f"PROPOSER_KIND_{name.upper()}")
    for name in (*offline.names(), "llm")
    if f"PROPOSER_KIND_{name.upper()}" in rpb.ProposerKind.DESCRIPTOR.values_by_name}
PROPOSER_MODES: Mapping[str, rpb.ProposerMode] = {"params": rpb.PROPOSER_MODE_PARAMS,
                                     "code": rpb.PROPOSER_MODE_CODE}
LEVELS: Mapping[str, rpb.Level] = {"1": rpb.LEVEL_1, "1.5": rpb.LEVEL_1_5, "2": rpb.LEVEL_2}
MECHANISM_STATUSES: Mapping[str, rpb.MechanismStatus] = {
    "proposed": rpb.MECHANISM_STATUS_PROPOSED,
    "gate_rejected": rpb.MECHANISM_STATUS_GATE_REJECTED,
    "active": rpb.MECHANISM_STATUS_ACTIVE, "kept": rpb.MECHANISM_STATUS_KEPT,
    "reverted": rpb.MECHANISM_STATUS_REVERTED, "disabled": rpb.MECHANISM_STATUS_DISABLED}


class UnknownValue(ValueError):
    """A value outside a closed set: the message lists the set."""


def to_enum(table: Mapping[str, E], name: str) -> E:
    """The enum number of an internal value; UnknownValue lists the allowed values."""
    try:
        return table[name]
    except KeyError:
        raise UnknownValue(f"{name!r} is not one of {', '.join(table)}") from None


def from_enum(table: Mapping[str, E], number: int, default: str | None) -> str:
    """The internal value of an enum number; 0 -> `default` (None: 0 is refused too)."""
    if number == 0 and default is not None:
        return default
    for name, value in table.items():
        if value == number:
            return name
    raise UnknownValue(f"{number} is not a known value (expected one of "
                       f"{', '.join(table)})" if number else "must be set")


def label(table: Mapping[str, E], number: int) -> str:
    """For display: the internal value, or "unknown (N)" for a number this client does not
    know (a newer server) rather than failing."""
    return next((name for name, value in table.items() if value == number),
                f"unknown ({number})")
