"""Replay a stored run: answer each call with the response the original run got for the
same trial and call number. Same task, seeds and answers give the same decisions."""

from __future__ import annotations

from collections.abc import Mapping

from controller.llm.errors import LLMError
from controller.llm.types import LLMRequest, LLMResponse

Answers = Mapping[tuple[int, int], LLMResponse]


class ReplayProvider:
    name = "replay"

    def __init__(self, run_id: str, answers: Answers) -> None:
        self.run_id = run_id
        self.model = next(iter(answers.values())).model if answers else "replay"
        self._answers = dict(answers)

    def complete(self, request: LLMRequest) -> LLMResponse:
        key = (request.tag.trial, request.tag.call)
        try:
            return self._answers[key]
        except KeyError:
            raise LLMError(f"run {self.run_id} stored no answer for trial {key[0]} call "
                           f"{key[1]}: the replay left the stored run's path", retryable=False,
                           ) from None
