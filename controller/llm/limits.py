"""How many tokens each kind of call may ask for.

A params-mode answer is one small JSON object; asking a small local model for 2048
tokens lets it ramble to that limit (tens of seconds at CPU speeds) on every retry. So
each call kind asks for what its answer needs, and the run's `llm.max_tokens` is only a
cap above them all.
"""

from __future__ import annotations

CALL_MAX_TOKENS: dict[str, int] = {
    "params": 1024,  # {"changes": {...}, "hypothesis": "..."}, with room for reasoning
    "code": 4096,  # a hypothesis line and search/replace blocks of train.py
    "config": 1024,  # a Level-1.5 adjustment (JSON)
    "mechanism": 4096,  # one Level-2 step: explore, critique, spec or the mechanism's code
}
# After a timed-out attempt the next one asks for half as much, down to this floor.
MIN_RETRY_TOKENS = 256


def max_tokens_for(kind: str, cap: int) -> int:
    """The bound for one call of `kind`, never above the run's cap."""
    return min(cap, CALL_MAX_TOKENS[kind])
