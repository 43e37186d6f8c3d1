"""Turn what a job left behind (the runner's result, its exception record, its metrics)
into bounded, typed values. All of it is written where the job could reach it, so every
field is checked: a forged record can make its own job look odd, never crash the
controller or produce a value the API cannot send (int32 fields, UTF-8 strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controller.sandbox import bounded_json
from controller.sandbox.bounded_json import Caps, JSONLimitError
from controller.sandbox.spec import ExceptionInfo, Frame

RESULT_BYTES = 4 << 20  # the runner's result: its own fields plus metrics and exception
# The whole result is parsed once with wide caps (only to bound the work); each part is
# then held to its own caps below. `truncate` only takes effect for lone surrogates here
# (a job's exception message may hold one): they become "?" instead of voiding the result.
RESULT_CAPS = Caps(max_bytes=RESULT_BYTES, max_depth=40, max_str=RESULT_BYTES,
                   max_items=1 << 20, truncate=True, nonfinite_null=True)
METRICS_BYTES = 1 << 20  # as the runner's cap on the metrics file
METRICS_CAPS = Caps(max_bytes=METRICS_BYTES, max_depth=16, max_str=64 << 10,
                    max_items=100_000, nonfinite_null=True)
MAX_FRAMES = 50
TYPE_CHARS, MESSAGE_CHARS, DETAIL_CHARS = 200, 4000, 4000
FILENAME_CHARS, NAME_CHARS, LINE_CHARS = 500, 200, 500
STATUS_CHARS = 32  # the executor maps known statuses; anything else is an error there


@dataclass(frozen=True)
class RunnerResult:
    """The runner's report, every field bounded. `raw` keeps the other keys (bounded
    too) for callers that know them; `problem` says why the report was unusable."""

    present: bool = False
    status: str = ""
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""
    exception: ExceptionInfo | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_error: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    def fields(self) -> dict[str, Any]:
        """The report as the executor's classification reads it: {} when unusable, else
        the raw keys with status, exit_code, signal and detail replaced by their checked
        values (exception and metrics: use the attributes)."""
        if not self.present:
            return {}
        return {**self.raw, "status": self.status, "exit_code": self.exit_code,
                "signal": self.signal, "detail": self.detail}


def runner_result(data: bytes | None) -> RunnerResult:
    """Parse the runner's result file; never raises. None means there was no file."""
    if data is None:
        return RunnerResult()
    try:
        parsed = bounded_json.loads(data, RESULT_CAPS, "the runner's result")
    except JSONLimitError as exc:
        return RunnerResult(problem=str(exc)[:DETAIL_CHARS])
    if not isinstance(parsed, dict):
        return RunnerResult(problem=f"the runner's result is a {type(parsed).__name__}, "
                                    "not an object")
    metrics, metrics_error = metrics_of(parsed.get("metrics"))
    status = parsed.get("status")
    return RunnerResult(
        present=True, status=status[:STATUS_CHARS] if isinstance(status, str) else "",
        exit_code=_optional_int32(parsed.get("exit_code")),
        signal=_optional_int32(parsed.get("signal")),
        detail=bounded_json.text(parsed.get("detail"), DETAIL_CHARS),
        exception=exception_info(parsed.get("exception")),
        metrics=metrics, metrics_error=metrics_error, raw=parsed)


def metrics_of(raw: Any) -> tuple[dict[str, Any], str]:
    """The job's metrics and, when they were dropped, why ("" when none were written)."""
    if raw is None:
        return {}, ""
    if not isinstance(raw, dict):
        return {}, f"the metrics file holds a JSON {type(raw).__name__}, not an object"
    if "__error__" in raw:  # the runner could not read it: too large or not JSON
        return {}, bounded_json.text(raw["__error__"], DETAIL_CHARS)
    try:
        metrics = bounded_json.bound(raw, METRICS_CAPS, "metrics")
        size = len(json.dumps(metrics))
    except (JSONLimitError, ValueError, TypeError) as exc:
        return {}, str(exc)[:DETAIL_CHARS]
    if size > METRICS_BYTES:
        return {}, f"metrics have {size} bytes as JSON, over the cap of {METRICS_BYTES}"
    return metrics, ""


def exception_info(raw: Any, *, required: bool = True) -> ExceptionInfo | None:
    """An exception record as typed, bounded data. With `required`, a record that is not
    an object with a "type" is no exception (None); without, it becomes type "Unknown"."""
    if not isinstance(raw, dict) or (required and "type" not in raw):
        if required:
            return None
        return ExceptionInfo(type="Unknown", message=bounded_json.text(raw, MESSAGE_CHARS),
                             frames=())
    frames = raw.get("frames")
    items = frames[-MAX_FRAMES:] if isinstance(frames, list) else []
    return ExceptionInfo(
        type=bounded_json.text(raw.get("type", "Unknown"), TYPE_CHARS) or "Unknown",
        message=bounded_json.text(raw.get("message", ""), MESSAGE_CHARS),
        frames=tuple(
            Frame(filename=bounded_json.text(f.get("filename"), FILENAME_CHARS),
                  lineno=max(bounded_json.int32(f.get("lineno")), 0),
                  name=bounded_json.text(f.get("name"), NAME_CHARS),
                  line=bounded_json.text(f.get("line"), LINE_CHARS))
            for f in items if isinstance(f, dict)))


def _optional_int32(value: Any) -> int | None:
    """An int32 field that may be absent: anything but an in-range int is None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if bounded_json.INT32_MIN <= value <= bounded_json.INT32_MAX else None
