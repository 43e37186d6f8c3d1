"""What the page asks for, from the gRPC API (read-only calls only: ListRuns, GetRun,
WatchRun, GetArtifact) and from the ablation files of the local state dir, as bounded
JSON-ready values.

Everything a trial, an LLM or a mechanism wrote is hostile: `clip` caps every string,
list and nesting depth before it leaves this module, and artifacts are cut to a head.
Protobuf messages go out as MessageToDict dicts (proto field names, enum names), so the
page reads the same names the proto documents.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.ui.curves import CurveTable, catch_up

MAX_STRING = 4000  # characters of one string value (descriptions, details, tracebacks)
MAX_ITEMS = 500  # items of one list or object
MAX_DEPTH = 8
MAX_ARTIFACT_BYTES = 512 << 10  # head of an artifact shown in the page
MAX_EVENTS = 500  # per events request; the page asks again after the last seq
MAX_EVENTS_BYTES = 4 << 20  # of one events answer's JSON, roughly
MAX_WAIT_SECONDS = 25.0  # longest long-poll for the first new event
DRAIN_SECONDS = 0.25  # after an event, the stream is read until it is quiet this long
# The first event is awaited at least this long: stored events take a round trip too.
MIN_WAIT_SECONDS = 1.0
CALL_SECONDS = 60.0  # longest wait for one unary call
MAX_RUNS = 1000  # runs listed
MAX_ABLATIONS = 200
MAX_ABLATION_FILE = 4 << 20
MAX_CURVE_RUNS = 8  # runs whose curve tables are kept between requests

RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
# The artifact names RunService documents; anything else is refused before a call.
ARTIFACT = re.compile(r"^(best/train\.py|results\.tsv|mechanisms\.md|"
                      r"trials/\d{1,7}/(train\.py|diff|log|llm\.json)|"
                      r"mechanisms/[A-Za-z0-9_.-]{1,100}\.py)$")


class BadRequest(ValueError):
    """A request the page (or anyone) sent is malformed; the message names the parameter."""


class NotFound(LookupError):
    """What the request names does not exist (an ablation; runs say so over gRPC)."""


def clip(value: Any, depth: int = 0) -> Any:
    """`value` with every string, list and object capped, and nesting cut at MAX_DEPTH."""
    if isinstance(value, str):
        return clip_text(value, MAX_STRING)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, dict):
        items = list(value.items())
        out = {clip_text(str(k), 200): clip(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["…"] = f"[{len(items) - MAX_ITEMS} more entries not shown]"
        return out
    if isinstance(value, list | tuple):
        kept = [clip(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(f"[{len(value) - MAX_ITEMS} more items not shown]")
        return kept
    return clip_text(repr(value), MAX_STRING)


def clip_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not shown]"


def message_json(message: Message) -> Any:
    return clip(json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True, unquote_int64_if_possible=True))


def run_json(run: rpb.Run) -> Any:
    """A run without the sources its request may carry (a baseline train.py, a task
    directory): the page never shows them, and they would be converted only to be cut."""
    light = rpb.Run()
    light.CopyFrom(run)
    task = light.request.task
    for name in ("train_py", "task_files"):
        if name in task.DESCRIPTOR.fields_by_name:
            task.ClearField(name)
    return message_json(light)


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise BadRequest("run: not a run id")
    return run_id


class Backend:
    """Async calls on one connected client; web.py runs them on the client's loop."""

    def __init__(self, client: Any, state_dir: Path | None) -> None:
        """`client`: a Client, or commands.local's StoreClient (the same stubs, read
        from the state dir's store when no controller holds it)."""
        self.client = client
        self.state_dir = state_dir
        self._curves: dict[str, CurveTable] = {}  # per run, oldest first (curves.py)
        self._curve_lock = asyncio.Lock()

    async def runs(self) -> dict[str, Any]:
        runs: list[Any] = []
        token = ""
        while len(runs) < MAX_RUNS:
            page = await asyncio.wait_for(self.client.runs.ListRuns(
                rpb.ListRunsRequest(page_size=100, page_token=token),
                metadata=self.client.metadata), CALL_SECONDS)
            runs.extend(run_json(r) for r in page.runs)
            token = page.next_page_token
            if not token:
                break
        return {"runs": runs[:MAX_RUNS], "more": bool(token)}

    async def run(self, run_id: str) -> Any:
        return run_json(await self._get_run(check_run_id(run_id)))

    async def _get_run(self, run_id: str) -> rpb.Run:
        run: rpb.Run = await asyncio.wait_for(self.client.runs.GetRun(
            rpb.GetRunRequest(run_id=run_id), metadata=self.client.metadata), CALL_SECONDS)
        return run

    async def events(self, run_id: str, after: int, wait: float) -> dict[str, Any]:
        """Events with seq > after: the first to come within `wait` seconds (at least
        MIN_WAIT_SECONDS), then the stream drained until it is quiet (a long poll).
        `done`: the run has finished and nothing follows `last_seq`; `more`: the answer
        is full (MAX_EVENTS, MAX_EVENTS_BYTES), so ask again at once; `ended`: the stream
        ended without the run finishing (a store read while no controller runs it), so
        waiting gains nothing."""
        check_run_id(run_id)
        if after < 0:
            raise BadRequest("after: must be >= 0")
        wait = min(max(wait, MIN_WAIT_SECONDS), MAX_WAIT_SECONDS)
        call = self.client.runs.WatchRun(
            rpb.WatchRunRequest(run_id=run_id, after_seq=after), metadata=self.client.metadata)
        stream = call.__aiter__()
        events: list[Any] = []
        ended = finished = False
        size = 0
        try:
            while len(events) < MAX_EVENTS and size < MAX_EVENTS_BYTES:
                try:
                    event = await asyncio.wait_for(anext(stream),
                                                   wait if not events else DRAIN_SECONDS)
                except TimeoutError:
                    break
                except StopAsyncIteration:
                    ended = True
                    break
                finished = finished or event.HasField("run_finished")
                events.append(message_json(event))
                size += len(json.dumps(events[-1]))
        finally:
            if hasattr(call, "cancel"):
                call.cancel()
            elif hasattr(stream, "aclose"):
                await stream.aclose()
        if ended and not finished:
            state = (await self._get_run(run_id)).state
            finished = state not in (rpb.RUN_STATE_RUNNING, rpb.RUN_STATE_PAUSED)
        last = events[-1]["seq"] if events else after
        full = len(events) >= MAX_EVENTS or size >= MAX_EVENTS_BYTES
        return {"events": events, "last_seq": last, "done": finished,
                "more": full and not finished, "ended": ended and not finished}

    async def artifact(self, run_id: str, name: str) -> dict[str, Any]:
        check_run_id(run_id)
        if not ARTIFACT.match(name):
            raise BadRequest("name: not an artifact the page shows (best/train.py, "
                             "results.tsv, mechanisms.md, trials/<n>/train.py|diff|log|"
                             "llm.json, mechanisms/<name>.py)")
        got = await asyncio.wait_for(self.client.runs.GetArtifact(
            rpb.GetArtifactRequest(run_id=run_id, name=name), metadata=self.client.metadata),
            CALL_SECONDS)
        content = bytes(got.content)
        head = content[:MAX_ARTIFACT_BYTES].decode("utf-8", errors="replace")
        return {"name": name, "content_type": clip_text(got.content_type, 100),
                "size": len(content), "truncated": len(content) > MAX_ARTIFACT_BYTES,
                "text": head}

    async def curves(self, run_id: str) -> dict[str, Any]:
        """Each trial's reported training curve (controller/ui/curves.py): {"curves":
        {"<trial>": [[step, value or null], ...]}}, the candidates' untrusted claims in
        the task's metric, read from the events after those read before."""
        check_run_id(run_id)
        async with self._curve_lock:
            table = self._curves.pop(run_id, None) or CurveTable()
            await catch_up(self.client, run_id, table, MIN_WAIT_SECONDS, DRAIN_SECONDS)
            self._curves[run_id] = table
            while len(self._curves) > MAX_CURVE_RUNS:
                del self._curves[next(iter(self._curves))]
        return table.answer()

    def ablations(self) -> dict[str, Any]:
        """Ablations live with the process that drove them (`bilevel ablate` writes
        <state>/ablations/<id>/ablation.json), not with the controller: the list is read
        from this machine's state dir; their runs come from the controller."""
        root = self.state_dir / "ablations" if self.state_dir is not None else None
        if root is None or not root.is_dir():
            return {"ablations": [], "state_dir": str(self.state_dir or "")}
        found = []
        for path in sorted(root.glob("*/ablation.json"), reverse=True)[:MAX_ABLATIONS]:
            spec = _read_ablation(path)
            if spec is not None:
                found.append(spec)
        return {"ablations": found, "state_dir": str(self.state_dir)}

    def ablation(self, ablation_id: str) -> Any:
        if not RUN_ID.match(ablation_id) or self.state_dir is None:
            raise BadRequest("ablation: not an ablation id")
        spec = _read_ablation(self.state_dir / "ablations" / ablation_id / "ablation.json")
        if spec is None:
            raise NotFound(f"no ablation {ablation_id} under {self.state_dir}/ablations")
        return spec


def _read_ablation(path: Path) -> Any:
    """The ablation file as JSON, or None if missing, too large or not an ablation."""
    try:
        if path.stat().st_size > MAX_ABLATION_FILE:
            return None
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        return None
    keep = ("id", "task", "repeats", "trials", "seed", "fresh_seeds", "arms", "cells",
            "reeval", "skipped", "created_at", "finished_at")
    return clip({k: raw[k] for k in keep if k in raw})
