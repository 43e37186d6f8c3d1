"""What a run report reads, fetched from a controller over the gRPC API (`bilevel report
RUN --server ADDR`): the run and its mechanisms (GetRun), every finished trial (the
trial_finished events of WatchRun, replayed from the start), and the diffs (GetArtifact).
The result is the same RunData the local state dir gives, so both render alike.

A running run's event stream does not end; GetRun's `trials_done` says how many
trial_finished events are already committed (the counter and the event are written in
one transaction), so the reader stops once it has that many.
"""

from __future__ import annotations

import asyncio

import grpc

from controller.analysis.data import (
    MAX_TRIAL_DIFF_CHARS,
    MAX_TRIAL_DIFFS,
    MechanismStats,
    RunData,
    best_diff,
    cap,
)
from controller.api.client import Client
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.sandbox import bounded_json
from controller.store.records import RunRecord, RunState, TrialRecord, TrialStatus

MECHANISM_CAPS = bounded_json.Caps(max_bytes=256 << 10, max_depth=6, max_str=512,
                                   max_items=256)
PARALLEL_FETCHES = 8


def _opt(message: object, name: str) -> float | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


def _status(value: int) -> TrialStatus | None:
    if value == rpb.TRIAL_STATUS_UNSPECIFIED:
        return None
    return TrialStatus(rpb.TrialStatus.Name(value).removeprefix("TRIAL_STATUS_").lower())


def _job_status(value: int) -> str:
    if value == spb.JOB_STATUS_UNSPECIFIED:
        return ""
    return str(spb.JobStatus.Name(value)).removeprefix("JOB_STATUS_").lower()


def _mechanism_status(value: int) -> str:
    if value == rpb.MECHANISM_STATUS_UNSPECIFIED:
        return ""
    return str(rpb.MechanismStatus.Name(value)).removeprefix("MECHANISM_STATUS_").lower()


def run_record(run: rpb.Run) -> RunRecord:
    state = RunState(rpb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower())
    task = run.request.task
    settings = {"task": {"preset": task.preset, "metric": task.metric,
                         "direction": "maximize" if task.maximize else "minimize",
                         "self_reported": task.metric_self_reported},
                "budgets": {"max_trials": run.request.budgets.max_trials}}
    return RunRecord(
        id=run.id, state=state, settings=settings,
        created_at=run.created_at.ToNanoseconds() / 1e9,
        updated_at=run.updated_at.ToNanoseconds() / 1e9, trials_done=run.trials_done,
        baseline_val_bpb=_opt(run, "baseline_loss"), best_val_bpb=_opt(run, "best_loss"),
        best_trial=run.best_trial if run.HasField("best_loss") else None,
        last_status=_status(run.last_status), stop_reason=run.stop_reason,
        elapsed_seconds=run.elapsed_seconds, llm_tokens_used=run.llm_tokens_used,
        summary=run.summary, noise_sigma=_opt(run, "noise_sigma"),
        llm_cost_usd=run.llm_cost_usd)


def trial_record(run_id: str, t: rpb.RunEvent.TrialFinished) -> TrialRecord:
    return TrialRecord(
        run_id=run_id, index=t.trial, finished=True, attempt=1, description=t.description,
        changes={}, status=_status(t.status), val_bpb=_opt(t, "loss"),
        memory_gb=t.memory_gib, job_status=_job_status(t.job_status), seconds=t.run_seconds,
        hypothesis=t.hypothesis, started_at=t.started_at.ToNanoseconds() / 1e9,
        ended_at=t.ended_at.ToNanoseconds() / 1e9, llm_tokens=t.llm_tokens,
        llm_cost_usd=t.llm_cost_usd, proposal_source=t.proposal_source)


def _effects(events: list[rpb.RunEvent.TrialFinished]) -> dict[str, dict[str, int]]:
    """Effects per mechanism, summed over the trials' `mechanisms_json`."""
    out: dict[str, dict[str, int]] = {}
    for t in events:
        if not t.mechanisms_json:
            continue
        try:
            per = bounded_json.loads(t.mechanisms_json, MECHANISM_CAPS,
                                     f"trial {t.trial} mechanisms_json")
        except bounded_json.JSONLimitError as exc:
            raise ValueError(f"the controller sent a bad mechanisms_json: {exc}") from None
        for name, calls in (per.items() if isinstance(per, dict) else ()):
            effects = calls.get("effects", {}) if isinstance(calls, dict) else {}
            mine = out.setdefault(str(name), {})
            for effect, n in (effects.items() if isinstance(effects, dict) else ()):
                if isinstance(n, int):
                    mine[str(effect)] = mine.get(str(effect), 0) + n
    return out


async def _finished(client: Client, run_id: str,
                    expected: int) -> list[rpb.RunEvent.TrialFinished]:
    out: dict[int, rpb.RunEvent.TrialFinished] = {}
    if expected == 0:
        return []
    stream = client.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id, after_seq=0),
                                  metadata=client.metadata)
    try:
        async for event in stream:
            if event.WhichOneof("event") == "trial_finished":
                out[event.trial_finished.trial] = event.trial_finished
                if len(out) >= expected:
                    break
    finally:
        stream.cancel()
    return [out[k] for k in sorted(out)]


async def _artifact(client: Client, run_id: str, name: str) -> bytes | None:
    try:
        reply = await client.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run_id, name=name),
                                              metadata=client.metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return bytes(reply.content)


async def load(client: Client, run_id: str) -> RunData:
    """The run `run_id` as the controller behind `client` has it."""
    run = await client.runs.GetRun(rpb.GetRunRequest(run_id=run_id), metadata=client.metadata)
    record = run_record(run)
    events = await _finished(client, run_id, run.trials_done)
    trials = [trial_record(run_id, t) for t in events]
    limit = asyncio.Semaphore(PARALLEL_FETCHES)

    async def diff(index: int) -> tuple[int, bytes | None]:
        async with limit:
            return index, await _artifact(client, run_id, f"trials/{index}/diff")

    wanted = [t.index for t in trials if t.index > 0][:MAX_TRIAL_DIFFS]
    diffs = {i: cap(raw.decode("utf-8", "replace"), MAX_TRIAL_DIFF_CHARS)
             for i, raw in await asyncio.gather(*(diff(i) for i in wanted)) if raw is not None}
    best = ""
    if record.best_trial:
        base = await _artifact(client, run_id, "trials/0/train.py")
        top = await _artifact(client, run_id, f"trials/{record.best_trial}/train.py")
        if base is not None and top is not None:
            best = best_diff(base, top, record.best_trial)
    effects = _effects(events)
    mechanisms = [MechanismStats(m.name, m.calls, m.effective, m.failures,
                                 effects.get(m.name, {}), m.origin,
                                 _mechanism_status(m.status), m.finding)
                  for m in run.mechanisms]
    return RunData(record, trials, best, mechanisms, diffs)

