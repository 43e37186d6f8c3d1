"""The LLM proposer: prompt -> answer -> validate; a rejected answer gets a short repair
turn that quotes the validation error, a bounded number of times. Params mode asks for
JSON knob changes (the paper's setting); code mode asks for search/replace edits of
train.py (Karpathy's).

A proposal that never came is not a trial: when no answer passes, the trial goes to the
fallback proposer (offline local search) and the failure is recorded with it, so the
trial budget is spent on candidates that ran.

Provider failures are not handled here: LLMUnavailable pauses the run and
LLMBudgetSpent finishes it (see loop.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from controller.llm.accounting import Pricing
from controller.llm.limits import max_tokens_for
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from controller.research.level1 import prompt
from controller.research.level1.answers import parse_code_hypothesis, parse_params_answer
from controller.research.level1.edits import apply_edits, parse_edits
from controller.research.level1.proposer import Proposal, Proposer, ProposerContext
from controller.research.level1.space import ProposalError
from controller.research.level1.validate import Validator, knob_changes
from controller.research.settings import ProposerSettings
from controller.research.task import GPT, Objective

REPAIR_QUOTE_CHARS = 300  # how much of a rejected answer a repair turn quotes back


def repair_turn(answer: str, reason: str) -> tuple[ChatMessage, ChatMessage]:
    """The short exchange that asks again after a rejected answer: the answer cut to its
    start (never replayed whole: two long answers once overflowed an 8k context) and the
    validation error, quoted."""
    quoted = answer if len(answer) <= REPAIR_QUOTE_CHARS else \
        answer[:REPAIR_QUOTE_CHARS] + f" [... {len(answer) - REPAIR_QUOTE_CHARS} more characters]"
    return (ChatMessage("assistant", quoted),
            ChatMessage("user", f"Rejected: {reason}\nAnswer again, briefly, in exactly the "
                        "required format and nothing else."))


class LLMProposer:
    fixes_crashes = True
    reads_context = True  # whether mechanism context text reaches it

    def __init__(self, provider: Provider, settings: ProposerSettings, pricing: Pricing,
                 run_id: str, task_description: str, protected: str, max_tokens: int,
                 temperature: float | None, objective: Objective = GPT,
                 fallback: Proposer | None = None, editable: str = "train.py") -> None:
        self.provider = provider
        self.editable = editable  # the file's path in the task, as the prompt names it
        self.fallback = fallback  # proposes when the LLM gives no usable answer
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
                                    self.objective, self.settings.max_changes,
                                    self.editable)
        proposal_id = uuid.uuid4().hex[:16]
        purpose = "fix" if ctx.crash else "propose"
        first = ChatMessage("user", user)
        messages = [first]
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
                accepted = self._accept(ctx, ctx.validator, response.text, entry)
            except ProposalError as exc:
                reason = str(exc)
                entry["rejected"] = reason
                messages = [first, *repair_turn(response.text, reason)]
                continue
            if call:
                entry["repair_of"] = call - 1
            return Proposal(changes=accepted.changes, description=accepted.description,
                            source=accepted.source, hypothesis=accepted.hypothesis,
                            proposal_id=proposal_id, transcript=tuple(transcript),
                            llm_tokens=tokens, cost_usd=cost)
        failure = f"no usable answer in {len(transcript)} calls; last: {reason}"
        if self.fallback is None:
            return Proposal(changes={}, description=f"no valid proposal: {reason}",
                            invalid=reason, proposal_id=proposal_id,
                            transcript=tuple(transcript), llm_tokens=tokens, cost_usd=cost,
                            llm_failure=failure)
        backup = self.fallback.propose(dataclasses.replace(ctx, crash=None))
        return dataclasses.replace(
            backup, description=f"{backup.description}; the LLM gave {failure}",
            proposal_id=proposal_id, transcript=tuple(transcript), llm_tokens=tokens,
            cost_usd=cost, llm_failure=failure)

    def _accept(self, ctx: ProposerContext, validator: Validator, text: str,
                entry: dict[str, Any]) -> Proposal:
        base = ctx.base_source
        if self.settings.mode == "params":
            answer = parse_params_answer(text)
            if answer.repaired:
                entry["json_repaired"] = True
            hypothesis = answer.hypothesis
            changes, source = validator.params(base, answer.changes)
            if len(changes) > self.settings.max_changes:
                raise ProposalError("changes", f"changes {len(changes)} knobs; change at most "
                                    f"{self.settings.max_changes} at a time")
            summary = ", ".join(f"{k} {ctx.incumbent.get(k)!r} -> {v!r}"
                                for k, v in changes.items())
            return Proposal(changes=changes, description=f"{summary}: {hypothesis}",
                            source=source, hypothesis=hypothesis)
        source = apply_edits(base, parse_edits(text))
        validator.code(base, source)
        hypothesis = parse_code_hypothesis(text)
        return Proposal(changes=knob_changes(validator.task, base, source),
                        description=f"[code] {hypothesis}", source=source,
                        hypothesis=hypothesis)
