"""What an OpenAI-compatible endpoint accepts, found out by asking and remembered per
(base URL, model) in the store, so a resumed run or the next run starts where the last
one ended instead of failing on the same request again.

Structured output is tried in the order servers can take it: `json_schema` (OpenAI,
vLLM), `json_object` with a `schema` (llama.cpp's server), bare `json_object`, and last
plain text with the schema written into the prompt. A server that refuses the field -
whatever its status: 400, 422, or llama.cpp's 500 with a validation body - moves the
endpoint one step down. `stream_options` (usage in a stream) is dropped the same way.
An endpoint that cut a streamed answer short while another call was in flight is called
one request at a time from then on (controller/llm/endpoint_gate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

STRUCTURED = ("json_schema", "json_object+schema", "json_object", "prompt")


@dataclass(frozen=True)
class Capabilities:
    structured: str = STRUCTURED[0]
    stream_usage: bool = True  # send stream_options.include_usage
    concurrent: bool = True  # False: the server drops a stream when another call arrives

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Capabilities:
        structured = values.get("structured", STRUCTURED[0])
        return cls(structured if structured in STRUCTURED else STRUCTURED[0],
                   values.get("stream_usage", "true") != "false",
                   values.get("concurrent", "true") != "false")

    def without(self, field: str) -> Capabilities | None:
        """The next step down after the server refused `field`; None if there is none."""
        if field == "response_format" and self.structured != STRUCTURED[-1]:
            return replace(self, structured=STRUCTURED[STRUCTURED.index(self.structured) + 1])
        if field == "stream_options" and self.stream_usage:
            return replace(self, stream_usage=False)
        return None

    def meet(self, other: Capabilities) -> Capabilities:
        """What both allow: the further step down of each (two callers that learned
        different things about one endpoint keep both lessons)."""
        return Capabilities(
            max(self.structured, other.structured, key=STRUCTURED.index),
            self.stream_usage and other.stream_usage, self.concurrent and other.concurrent)

    def as_mapping(self) -> dict[str, str]:
        return {"structured": self.structured,
                "stream_usage": "true" if self.stream_usage else "false",
                "concurrent": "true" if self.concurrent else "false"}


class CapabilityMemory(Protocol):
    """Where negotiated capabilities are kept (controller/store/llm_capabilities.py)."""

    def get(self, base_url: str, model: str) -> Mapping[str, str]: ...

    def put(self, base_url: str, model: str, values: Mapping[str, str], reason: str) -> None: ...
