"""Reading an LLM's answer the way real models write it: JSON inside prose or a fence,
with trailing commas, single quotes or a cut-off end. A strict parse is tried first; if
it fails, json-repair's tolerant reader. Either way what comes out is then validated
(knob names, types, ranges) by the caller, so a repair can never smuggle in a change the
schema would refuse - it only spares a model a round trip for a missing quote."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import json_repair

from controller.research.level1.space import ProposalError

FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
MAX_ANSWER_CHARS = 64_000  # an answer longer than this is not read (hostile or runaway)
MAX_DEPTH = 16  # nesting of brackets; an answer needs 2


def _depth(text: str) -> int:
    """The deepest bracket nesting (strings not excluded: an over-count only refuses)."""
    depth = deepest = 0
    for ch in text:
        if ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth = max(depth - 1, 0)
    return deepest


@dataclass(frozen=True)
class ParamsAnswer:
    changes: dict[str, Any]
    hypothesis: str
    repaired: bool  # the strict parse failed and the tolerant one read it


PARAMS_SHAPE = '{"changes": {...}, "hypothesis": "..."}'


def read_object(text: str, shape: str = PARAMS_SHAPE) -> tuple[dict[str, Any], bool]:
    """The answer's JSON object (strict, else repaired), and whether it needed repair;
    `shape` is what the error tells the model to answer with. Size and nesting are
    capped before anything is parsed."""
    if len(text) > MAX_ANSWER_CHARS:
        raise ProposalError("response", f"the answer is {len(text)} characters; answer "
                            "with the JSON object alone")
    if _depth(text) > MAX_DEPTH:
        raise ProposalError("response", f"the JSON nests deeper than {MAX_DEPTH} levels; "
                            f"answer with {shape}")
    fenced = FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    if start < 0:
        raise ProposalError("response", f"no JSON object found; answer with {shape}")
    end = body.rfind("}")
    strict = body[start:end + 1] if end > start else ""
    try:
        data, repaired = json.loads(strict), False
    except json.JSONDecodeError as exc:
        data, repaired = json_repair.loads(body[start:]), True
        if not isinstance(data, dict) or not data:
            raise ProposalError("response", f"the JSON does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ProposalError("response", f"the answer is not a JSON object; answer with {shape}")
    return data, repaired


def parse_params_answer(text: str) -> ParamsAnswer:
    """The knob changes and hypothesis of a params-mode answer, fenced or not."""
    data, repaired = read_object(text)
    if not isinstance(data.get("changes"), dict):
        raise ProposalError("response", 'the JSON must have an object "changes"')
    hypothesis = data.get("hypothesis", "")
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        raise ProposalError("response", 'the JSON must have a non-empty string "hypothesis"')
    return ParamsAnswer(data["changes"], " ".join(hypothesis.split()), repaired)


NO_HYPOTHESIS = "(the answer stated no hypothesis)"


def parse_code_hypothesis(text: str) -> str:
    """The `HYPOTHESIS:` line of a code-mode answer. A model that wrote valid edits but
    no such line (a small local model did, every time) still made a proposal: the edits
    are what runs, so the hypothesis is recorded as missing instead of refusing them."""
    match = re.search(r"^\s*[*_]*HYPOTHESIS[*_]*:[*_]*\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
    return " ".join(match.group(1).split()) if match else NO_HYPOTHESIS
