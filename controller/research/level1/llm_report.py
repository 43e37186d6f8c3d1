"""The run summary's line on the LLM: how many calls were made, failed and repaired,
what the proposals cost in prompt tokens, what the prompt cache saved, and what the
endpoint negotiation settled on - from the stored calls, so a resumed run counts all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.store.records import TrialRecord

PROPOSAL_PURPOSES = ("propose", "fix")


def llm_line(calls: Sequence[Mapping[str, Any]], trials: Sequence[TrialRecord]) -> str:
    """"" when the run made no LLM call."""
    if not calls:
        return ""
    failed = sum(1 for c in calls if c.get("error"))
    asked: dict[str, int] = {}  # proposal id -> answered calls
    for c in calls:
        if c.get("purpose") in PROPOSAL_PURPOSES and c.get("proposal_id"):
            asked[c["proposal_id"]] = asked.get(c["proposal_id"], 0) + (0 if c.get("error")
                                                                       else 1)
    unusable = [t for t in trials if t.llm_failure]
    lost = {t.proposal_id for t in unusable}
    repaired = sum(1 for pid, n in asked.items() if n > 1 and pid not in lost)
    prompt = sum(int(c.get("input_tokens", 0)) for c in calls)
    answer = sum(int(c.get("output_tokens", 0)) for c in calls)
    read = sum(int(c.get("cache_read_tokens", 0)) for c in calls)
    written = sum(int(c.get("cache_write_tokens", 0)) for c in calls)
    estimated = sum(1 for c in calls if c.get("usage_estimated"))
    parts = [f"LLM: {len(calls)} calls ({failed} failed)"]
    if asked:
        per = sum(int(c.get("input_tokens", 0)) for c in calls
                  if c.get("purpose") in PROPOSAL_PURPOSES) / len(asked)
        parts.append(f"{len(asked)} proposals ({repaired} repaired, {len(unusable)} unusable"
                     f"{': their trials went to local search' if unusable else ''}), "
                     f"{per:,.0f} prompt tokens per proposal")
    # The cache is stated even at 0: a prompt cache that never hits is worth knowing.
    usage = [f"{read:,} read from the prompt cache, {written:,} written to it"]
    if estimated:
        usage.append(f"estimated from characters for {estimated} calls: no usage reported")
    parts.append(f"{prompt:,} prompt + {answer:,} answer tokens ({'; '.join(usage)})")
    notes = [n for c in calls for n in c.get("notes", ())]
    if notes:
        parts.append(f"negotiated: {notes[-1]}")
    return ", ".join(parts)


def never_usable(trials: Sequence[TrialRecord]) -> str:
    """The run's honest reason when the LLM produced no usable proposal at all; "" if it
    produced one, or was not asked."""
    asked = [t for t in trials if t.index > 0 and (t.proposal_id or t.llm_failure)]
    if asked and all(t.llm_failure for t in asked):
        return (f"the LLM never produced a usable proposal ({len(asked)} asked; last: "
                f"{asked[-1].llm_failure[:200]}); every trial was proposed by local search")
    return ""
