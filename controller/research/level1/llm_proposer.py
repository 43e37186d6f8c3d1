"""The LLM proposer: prompt -> answer -> validate; a rejected answer goes back to the LLM
with its reason, a bounded number of times. Params mode asks for JSON knob changes (the
paper's setting); code mode asks for search/replace edits of train.py (Karpathy's).

Provider failures are not handled here: LLMUnavailable pauses the run and
LLMBudgetSpent finishes it (see loop.py).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from controller.llm.accounting import Pricing
from controller.llm.limits import max_tokens_for
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from controller.research.level1 import prompt
from controller.research.level1.edits import apply_edits, parse_edits
from controller.research.level1.proposer import Proposal, ProposerContext
from controller.research.level1.space import ProposalError
from controller.research.level1.validate import Validator, knob_changes
from controller.research.settings import ProposerSettings
from controller.research.task import GPT, Objective

FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_params_answer(text: str) -> tuple[dict[str, Any], str]:
    """({knob: value}, hypothesis) from a JSON answer, fenced or not."""
    fenced = FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise ProposalError("response", "no JSON object found; answer with "
                            '{"changes": {...}, "hypothesis": "..."}')
    try:
        data = json.loads(body[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ProposalError("response", f"the JSON does not parse: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("changes"), dict):
        raise ProposalError("response", 'the JSON must have an object "changes"')
    hypothesis = data.get("hypothesis", "")
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        raise ProposalError("response", 'the JSON must have a non-empty string "hypothesis"')
    return data["changes"], " ".join(hypothesis.split())


def parse_code_hypothesis(text: str) -> str:
    match = re.search(r"^\s*HYPOTHESIS:\s*(.+)$", text, re.MULTILINE)
    if match is None:
        raise ProposalError("response", "start the answer with a line `HYPOTHESIS: ...`")
    return " ".join(match.group(1).split())


class LLMProposer:
    fixes_crashes = True
    reads_context = True  # whether mechanism context text reaches it

    def __init__(self, provider: Provider, settings: ProposerSettings, pricing: Pricing,
                 run_id: str, task_description: str, protected: str, max_tokens: int,
                 temperature: float | None, objective: Objective = GPT) -> None:
        self.provider = provider
        self.objective = objective  # the task's metric and direction, for the prompt
        self.settings = settings
        self.pricing = pricing
        self.run_id = run_id
        self.task_description = task_description
        self.protected = protected
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.label = f"llm {provider.name}:{provider.model} ({settings.mode} mode)"

    def propose(self, ctx: ProposerContext) -> Proposal:
        assert ctx.validator is not None, "the loop passes a validator"
        system, user = prompt.build(ctx, self.settings.mode, self.task_description,
                                    self.protected, self.settings.history_trials,
                                    self.objective)
        proposal_id = uuid.uuid4().hex[:16]
        purpose = "fix" if ctx.crash else "propose"
        messages = [ChatMessage("user", user)]
        transcript: list[dict[str, Any]] = []
        tokens, cost, reason = 0, 0.0, ""
        schema = (prompt.params_schema(ctx.space, tuple(ctx.incumbent),
                                       self.settings.max_changes)
                  if self.settings.mode == "params" else None)
        max_tokens = max_tokens_for(self.settings.mode, self.max_tokens)
        for call in range(1 + self.settings.max_invalid_retries):
            request = LLMRequest(system, tuple(messages), max_tokens, self.temperature,
                                 CallTag(self.run_id, ctx.trial_index, call, purpose,
                                         proposal_id), response_schema=schema)
            response = self.provider.complete(request)
            tokens += response.tokens
            cost += self.pricing.cost(response)
            entry: dict[str, Any] = {"call": call, "system": system if call == 0 else "",
                                     "prompt": messages[-1].content,
                                     "response": response.text, "model": response.model,
                                     "input_tokens": response.input_tokens,
                                     "output_tokens": response.output_tokens}
            transcript.append(entry)
            try:
                accepted = self._accept(ctx, ctx.validator, response.text)
            except ProposalError as exc:
                reason = str(exc)
                entry["rejected"] = reason
                messages += [ChatMessage("assistant", response.text),
                             ChatMessage("user", f"Rejected: {reason}\nAnswer again, in the "
                                         "required format.")]
                continue
            return Proposal(changes=accepted.changes, description=accepted.description,
                            source=accepted.source, hypothesis=accepted.hypothesis,
                            proposal_id=proposal_id, transcript=tuple(transcript),
                            llm_tokens=tokens, cost_usd=cost)
        return Proposal(changes={}, description=f"no valid proposal: {reason}",
                        invalid=reason, proposal_id=proposal_id, transcript=tuple(transcript),
                        llm_tokens=tokens, cost_usd=cost)

    def _accept(self, ctx: ProposerContext, validator: Validator, text: str) -> Proposal:
        base = ctx.base_source
        if self.settings.mode == "params":
            raw, hypothesis = parse_params_answer(text)
            changes, source = validator.params(base, raw)
            if len(changes) > self.settings.max_changes:
                raise ProposalError("changes", f"changes {len(changes)} knobs; change at most "
                                    f"{self.settings.max_changes} at a time")
            summary = ", ".join(f"{k} {ctx.incumbent.get(k)!r} -> {v!r}"
                                for k, v in changes.items())
            return Proposal(changes=changes, description=f"{summary}: {hypothesis}",
                            source=source, hypothesis=hypothesis)
        hypothesis = parse_code_hypothesis(text)
        source = apply_edits(base, parse_edits(text))
        validator.code(base, source)
        return Proposal(changes=knob_changes(validator.task, base, source),
                        description=f"[code] {hypothesis}", source=source,
                        hypothesis=hypothesis)
