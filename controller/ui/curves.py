"""Per-trial training curves for the page, from the run's `trial_progress` events: the
points streamed while a trial runs, replaced by its whole stored curve (`curve_json`)
when it finishes. The values are the candidates' own claims (untrusted), in the task's
metric; the page draws them, the score stays the trusted scorer's.

The JSON the backend serves: {"curves": {"<trial>": [[step, value or null], ...]}}.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.sandbox import bounded_json

MAX_POINTS = 256  # per trial, whatever the events say
MAX_TRIALS = 5000
CURVE_CAPS = bounded_json.Caps(max_bytes=64 << 10, max_depth=3, max_str=64,
                               max_items=MAX_POINTS, nonfinite_null=True)


@dataclass
class CurveTable:
    curves: dict[int, list[list[Any]]] = field(default_factory=dict)
    last_seq: int = 0

    def apply(self, event: rpb.RunEvent) -> None:
        if event.WhichOneof("event") != "trial_progress":
            return
        p = event.trial_progress
        if p.trial not in self.curves and len(self.curves) >= MAX_TRIALS:
            return
        if p.curve_json:
            self.curves[p.trial] = _points(p.curve_json)
            return
        value = p.value if p.HasField("value") and math.isfinite(p.value) else None
        curve = self.curves.setdefault(p.trial, [])
        if (not curve or p.step > curve[-1][0]) and len(curve) < MAX_POINTS:
            curve.append([p.step, value])

    def answer(self) -> dict[str, Any]:
        return {"curves": {str(i): c for i, c in sorted(self.curves.items())}}


def _points(raw: str) -> list[list[Any]]:
    try:
        value = bounded_json.loads(raw, CURVE_CAPS, "curve_json")
    except bounded_json.JSONLimitError:
        return []
    out: list[list[Any]] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) \
                and (item[1] is None or isinstance(item[1], int | float)):
            out.append([item[0], item[1]])
    return out


async def catch_up(client: Any, run_id: str, table: CurveTable, first_wait: float,
                   quiet: float) -> None:
    """Apply the run's events after `table.last_seq` until the stream is quiet (a running
    run's stream never ends) or ends."""
    call = client.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id, after_seq=table.last_seq),
                                metadata=client.metadata)
    stream = call.__aiter__()
    wait = first_wait
    try:
        while True:
            try:
                event = await asyncio.wait_for(anext(stream), wait)
            except (TimeoutError, StopAsyncIteration):
                break
            wait = quiet
            table.last_seq = max(table.last_seq, event.seq)
            table.apply(event)
    finally:
        if hasattr(call, "cancel"):
            call.cancel()
        elif hasattr(stream, "aclose"):
            await stream.aclose()
