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
import difflib
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.research.tasks.knob_document import KnobDocument
from controller.ui.curves import CurveTable, catch_up
from controller.ui.trials import TrialTable, export

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
MAX_TABLES = 8  # runs whose trial tables are kept between requests
MAX_DIFF_LINES = 4000

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
        # Per run: the trials read so far and the baseline's editable file, so a later
        # request reads only the events after them.
        self._tables: OrderedDict[str, tuple[TrialTable, list[str | None]]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

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

    async def trials(self, run_id: str) -> dict[str, Any]:
        """The run's trials with one column per knob and the knobs' importance
        (controller/ui/trials.py), its events read after those read before."""
        check_run_id(run_id)
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            table, baseline = self._tables.pop(run_id, (TrialTable(), [None]))
            await self._catch_up(run_id, table)
            if baseline[0] is None and table.trials.get(0, None) is not None \
                    and table.trials[0].finished:
                baseline[0] = await self._editable(run_id, 0)
            self._tables[run_id] = (table, baseline)
            while len(self._tables) > MAX_TABLES:
                old, _ = self._tables.popitem(last=False)
                self._locks.pop(old, None)
            run = await self._get_run(run_id)
            task = run.request.task
            view = table.answer(_knobs(baseline[0], table.knob_names()),
                                task.metric or "val_bpb", task.maximize)
        trials = [clip(t) for t in view.pop("trials")]
        return {**clip(view), "trials": trials, "run_done": table.done}

    async def export(self, run_id: str, form: str) -> dict[str, Any]:
        """The finished trials as CSV or JSON text (knobs as columns), for the page to
        save: a download link could not carry the page's key."""
        if form not in ("csv", "json"):
            raise BadRequest("format: csv or json")
        view = await self.trials(run_id)
        text, content_type = export(view, form)
        return {"filename": f"{run_id}-trials.{form}", "content_type": content_type,
                "text": text, "rows": sum(1 for r in view["trials"] if r["finished"])}

    async def compare(self, run_id: str, a: int, b: int) -> dict[str, Any]:
        """A unified diff of two trials' editable files (empty when either is missing)."""
        check_run_id(run_id)
        if a < 0 or b < 0:
            raise BadRequest("a, b: trial numbers")
        left, right = await self._editable(run_id, a), await self._editable(run_id, b)
        if left is None or right is None:
            return {"diff": "", "note": "the editable file of trial "
                    f"{a if left is None else b} is not stored"}
        lines = list(difflib.unified_diff(left.splitlines(keepends=True),
                                          right.splitlines(keepends=True),
                                          f"trial {a}/train.py", f"trial {b}/train.py"))
        note = "" if lines else "the two files are the same"
        if len(lines) > MAX_DIFF_LINES:
            note = f"{len(lines) - MAX_DIFF_LINES} more lines not shown"
        return {"diff": clip_text("".join(lines[:MAX_DIFF_LINES]), MAX_ARTIFACT_BYTES),
                "note": note}

    async def _editable(self, run_id: str, trial: int) -> str | None:
        """Trial `trial`'s editable file (its head), or None if it is not stored."""
        try:
            got = await asyncio.wait_for(self.client.runs.GetArtifact(
                rpb.GetArtifactRequest(run_id=run_id, name=f"trials/{trial}/train.py"),
                metadata=self.client.metadata), CALL_SECONDS)
        except grpc.aio.AioRpcError as exc:  # the store client's errors are these too
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None
        return bytes(got.content)[:MAX_ARTIFACT_BYTES].decode("utf-8", errors="replace")

    async def _catch_up(self, run_id: str, table: TrialTable) -> None:
        """Apply the events after table.last_seq: those stored, then whatever comes
        until the stream is quiet (a running run's stream never ends)."""
        if table.done:
            return
        call = self.client.runs.WatchRun(
            rpb.WatchRunRequest(run_id=run_id, after_seq=table.last_seq),
            metadata=self.client.metadata)
        stream = call.__aiter__()
        first = True
        try:
            while True:
                try:
                    event = await asyncio.wait_for(
                        anext(stream), MIN_WAIT_SECONDS if first else DRAIN_SECONDS)
                except (TimeoutError, StopAsyncIteration):
                    break
                first = False
                table.apply(event)
        finally:
            if hasattr(call, "cancel"):
                call.cancel()
            elif hasattr(stream, "aclose"):
                await stream.aclose()

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


def _knobs(source: str | None, names: list[str]) -> dict[str, Any]:
    """The baseline's values of `names` read from its editable file (trials/0/train.py
    names it whatever its path). The API does not say which kind of file it is, so each
    reader a task may use is tried (a Python file's literals, a JSON/flags, TOML or YAML
    config's keys) and the one that finds the most knobs wins; those none finds are
    left out."""
    if source is None or not names:
        return {}
    best: dict[str, Any] = {}
    for kind in ("python", "json", "toml", "yaml"):
        try:
            found = KnobDocument(kind, "train.py", tuple(names)).read(source)
        except (SyntaxError, ValueError, RecursionError):
            continue
        found = {n: list(v) if isinstance(v, tuple) else v for n, v in found.items()
                 if n in names}
        if len(found) > len(best):
            best = found
    return best


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
