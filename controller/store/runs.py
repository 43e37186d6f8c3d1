"""Runs, their trials and their events in the store (the database: store/db.py).

Every write that produces events appends them in the same transaction, so the events
and the state they announce commit together.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from controller.principals import SHARED
from controller.store.db import Database
from controller.store.mechanisms import HookCall, MechanismLog, MechanismRow
from controller.store.records import (
    RUN_HINT,
    Cursor,
    EventKind,
    EventRecord,
    NotFoundError,
    RunRecord,
    RunState,
    TrialFinish,
    TrialMeta,
    TrialRecord,
    TrialStatus,
)


class RunStore(Database):
    """The store: its runs, trials and events here, the other tables through the
    modules that take it (MechanismLog, CallLog, MemoryStore, RunResources)."""

    # Runs

    def create_run(self, run_id: str, settings: dict[str, Any],
                   owner: str = SHARED.name) -> RunRecord:
        now = time.time()
        with self.transaction() as tx:
            tx.db.execute("INSERT INTO runs (id, state, settings_json, created_at, updated_at,"
                          " owner) VALUES (?, ?, ?, ?, ?, ?)",
                          (run_id, RunState.RUNNING.value, json.dumps(settings), now, now,
                           owner))
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        rows = self.query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError("run", run_id, RUN_HINT)
        return run_from_row(rows[0])

    def list_runs(self, limit: int, after: Cursor | None = None,
                  owner: str | None = None) -> tuple[list[RunRecord], Cursor | None]:
        """Newest first (created_at, then id), only `owner`'s runs unless it is None;
        returns the page and the cursor of the next page (None: last). A cursor is the
        last run of a page, so it names nothing but a run the caller was shown."""
        where: list[str] = []
        args: list[str | float] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [after.created_at, after.created_at, after.run_id]
        rows = self.query(
            "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") +
            " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1))
        page = [run_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, (Cursor(page[-1].created_at, page[-1].id) if more and page else None)

    def running_runs(self) -> list[RunRecord]:
        rows = self.query("SELECT * FROM runs WHERE state = ? ORDER BY rowid",
                           (RunState.RUNNING.value,))
        return [run_from_row(r) for r in rows]

    def append_event(self, run_id: str, kind: EventKind, payload: dict[str, Any]) -> None:
        with self.transaction(run_id) as tx:
            tx.event(run_id, kind, payload)

    def finish_run(self, run_id: str, state: RunState, reason: str, summary: str,
                   payload: dict[str, Any]) -> bool:
        """Move a running run to a terminal state with its run_finished event; False if
        it had already finished (the first caller wins)."""
        with self.transaction(run_id) as tx:
            row = tx.db.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError("run", run_id)
            if RunState(row["state"]).terminal:
                return False
            tx.db.execute("UPDATE runs SET state = ?, stop_reason = ?, summary = ?, "
                          "updated_at = ? WHERE id = ?",
                          (state.value, reason, summary, time.time(), run_id))
            tx.db.execute("UPDATE trials SET finished = -1 WHERE run_id = ? AND finished = 0",
                          (run_id,))
            tx.event(run_id, EventKind.RUN_FINISHED, payload)
        return True

    def pause_run(self, run_id: str, reason: str) -> bool:
        """Running -> paused with a run_paused event; False if it was not running."""
        with self.transaction(run_id) as tx:
            cur = tx.db.execute("UPDATE runs SET state = ?, stop_reason = ?, updated_at = ? "
                                "WHERE id = ? AND state = ?",
                                (RunState.PAUSED.value, reason, time.time(), run_id,
                                 RunState.RUNNING.value))
            if cur.rowcount != 1:
                return False
            tx.event(run_id, EventKind.RUN_PAUSED, {"reason": reason})
        return True

    def unpause_run(self, run_id: str) -> bool:
        """Paused -> running (the loop's run_started event follows); False if not paused."""
        with self.transaction() as tx:
            cur = tx.db.execute("UPDATE runs SET state = ?, stop_reason = '', updated_at = ? "
                                "WHERE id = ? AND state = ?",
                                (RunState.RUNNING.value, time.time(), run_id,
                                 RunState.PAUSED.value))
            return cur.rowcount == 1

    # Trials

    def begin_trial(self, run_id: str, index: int, description: str,
                    changes: dict[str, Any], meta: TrialMeta | None = None) -> int:
        """Record a trial about to run; returns its attempt (2+ when a restart re-runs a
        trial that never finished). Emits trial_proposed once and trial_started always."""
        with self.transaction(run_id) as tx:
            row = tx.db.execute("SELECT finished, attempt FROM trials WHERE run_id = ? AND "
                                "idx = ?", (run_id, index)).fetchone()
            if row is not None and row["finished"] == 1:
                raise ValueError(f"trial {index} of run {run_id} has already finished")
            meta = meta or TrialMeta()
            if row is None:
                attempt = 1
                tx.db.execute("INSERT INTO trials (run_id, idx, description, changes_json, "
                              "hypothesis, parent, fix_of, proposal_id, arm, arm_probability, "
                              "llm_failure) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (run_id, index, description, json.dumps(changes),
                               meta.hypothesis, meta.parent, meta.fix_of, meta.proposal_id,
                               meta.arm, meta.arm_probability, meta.llm_failure))
                payload: dict[str, Any] = {"trial": index, "description": description,
                                           "changes_json": json.dumps(changes)}
                if meta.hypothesis:
                    payload["hypothesis"] = meta.hypothesis
                if meta.parent is not None:
                    payload["parent"] = meta.parent
                if meta.fix_of is not None:
                    payload["fix_of"] = meta.fix_of
                tx.event(run_id, EventKind.TRIAL_PROPOSED, payload)
            else:
                attempt = int(row["attempt"]) + 1
                tx.db.execute("UPDATE trials SET attempt = ?, finished = 0, description = ?,"
                              " changes_json = ?, hypothesis = ?, parent = ?, fix_of = ?, "
                              "proposal_id = ? WHERE run_id = ? AND idx = ?",
                              (attempt, description, json.dumps(changes), meta.hypothesis,
                               meta.parent, meta.fix_of, meta.proposal_id, run_id, index))
            tx.event(run_id, EventKind.TRIAL_STARTED, {"trial": index, "attempt": attempt})
        return attempt

    def finish_trial(self, run_id: str, done: TrialFinish, elapsed_seconds: float) -> None:
        """The trial's result, the run's counters and incumbent, and the trial_finished
        (and new_best) events, in one transaction."""
        with self.transaction(run_id) as tx:
            run = run_from_row(tx.db.execute("SELECT * FROM runs WHERE id = ?",
                                             (run_id,)).fetchone())
            cur = tx.db.execute(
                "UPDATE trials SET finished = 1, status = ?, val_bpb = ?, memory_gb = ?, "
                "metrics_json = ?, job_status = ?, exception_json = ?, seconds = ?, "
                "started_at = ?, ended_at = ?, llm_tokens = ?, llm_cost_usd = ?, "
                "proposal_source = ?, node = ? WHERE run_id = ? AND idx = ? AND finished = 0",
                (done.status.value, done.val_bpb, done.memory_gb, json.dumps(done.metrics),
                 done.job_status, json.dumps(done.exception) if done.exception else None,
                 done.seconds, done.started_at, done.ended_at, done.llm_tokens,
                 done.llm_cost_usd, done.proposal_source, done.node, run_id, done.index))
            if cur.rowcount != 1:
                raise ValueError(f"trial {done.index} of run {run_id} is not running")
            if done.mechanism_calls or done.mechanism_states:
                MechanismLog.write_calls(tx, run_id, done.index, list(done.mechanism_calls),
                                         done.mechanism_states)
            best, best_trial = run.best_val_bpb, run.best_trial
            if done.new_best:
                best, best_trial = done.val_bpb, done.index
            baseline, sigma = run.baseline_val_bpb, run.noise_sigma
            if done.index == 0:
                baseline = done.val_bpb
                sigma = done.noise_sigma
            tx.db.execute(
                "UPDATE runs SET trials_done = trials_done + 1, last_status = ?, "
                "best_val_bpb = ?, best_trial = ?, baseline_val_bpb = ?, elapsed_seconds = ?,"
                " llm_tokens_used = llm_tokens_used + ?, noise_sigma = ?, updated_at = ? "
                "WHERE id = ?",
                (done.status.value, best, best_trial, baseline, elapsed_seconds,
                 done.tokens_used, sigma, time.time(), run_id))
            row = tx.db.execute("SELECT description, hypothesis, arm, arm_probability, "
                                "llm_failure FROM trials WHERE run_id = ? AND idx = ?",
                                (run_id, done.index)).fetchone()
            tx.event(run_id, EventKind.TRIAL_FINISHED, {
                "trial": done.index, "status": done.status.value, "val_bpb": done.val_bpb,
                "memory_gb": done.memory_gb, "metrics_json": json.dumps(done.metrics),
                "job_status": done.job_status, "exception": done.exception,
                "seconds": done.seconds, "description": row["description"],
                "hypothesis": row["hypothesis"], "started_at": done.started_at,
                "ended_at": done.ended_at, "llm_tokens": done.llm_tokens,
                "llm_cost_usd": done.llm_cost_usd,
                "mechanisms_json": json.dumps(_per_mechanism(done.mechanism_calls)),
                "proposal_source": done.proposal_source, "node": done.node,
                "arm": row["arm"], "arm_probability": row["arm_probability"],
                "llm_failure": row["llm_failure"]})
            if done.new_best:
                tx.event(run_id, EventKind.NEW_BEST, {
                    "trial": done.index, "val_bpb": done.val_bpb,
                    "previous_val_bpb": run.best_val_bpb})

    def trials(self, run_id: str) -> list[TrialRecord]:
        rows = self.query("SELECT * FROM trials WHERE run_id = ? ORDER BY idx", (run_id,))
        return [_trial(r) for r in rows]

    def mechanism_records(self, run_id: str, trial: int | None = None) -> list[HookCall]:
        """Every mechanism hook call of the run (or of one trial), in order."""
        return MechanismLog(self).calls(run_id, trial)

    def mechanisms(self, run_id: str) -> list[MechanismRow]:
        """Every mechanism the run tried, with origin, field, gates, status and scores."""
        return MechanismLog(self).mechanisms(run_id)

    def events_after(self, run_id: str, after_seq: int, limit: int = 500) -> list[EventRecord]:
        rows = self.query("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq "
                           "LIMIT ?", (run_id, after_seq, limit))
        return [EventRecord(run_id=r["run_id"], seq=r["seq"], time=r["time"],
                            kind=EventKind(r["kind"]), payload=json.loads(r["payload_json"]))
                for r in rows]


def _per_mechanism(records: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """A trial's hook calls per mechanism: calls, effective calls, effects."""
    out: dict[str, Any] = {}
    for rec in records:
        s = out.setdefault(rec["mechanism"], {"calls": 0, "effective": 0, "effects": {}})
        s["calls"] += 1
        s["effective"] += int(rec["effective"])
        s["effects"][rec["effect"]] = s["effects"].get(rec["effect"], 0) + 1
    return out


def run_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"], state=RunState(row["state"]), settings=json.loads(row["settings_json"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
        trials_done=row["trials_done"], baseline_val_bpb=row["baseline_val_bpb"],
        best_val_bpb=row["best_val_bpb"], best_trial=row["best_trial"],
        last_status=TrialStatus(row["last_status"]) if row["last_status"] else None,
        stop_reason=row["stop_reason"], elapsed_seconds=row["elapsed_seconds"],
        llm_tokens_used=row["llm_tokens_used"], summary=row["summary"],
        noise_sigma=row["noise_sigma"], llm_cost_usd=row["llm_cost_usd"], owner=row["owner"])


def _trial(row: sqlite3.Row) -> TrialRecord:
    return TrialRecord(
        run_id=row["run_id"], index=row["idx"], finished=row["finished"] == 1,
        attempt=row["attempt"], description=row["description"],
        changes=json.loads(row["changes_json"]),
        status=TrialStatus(row["status"]) if row["status"] else None,
        val_bpb=row["val_bpb"], memory_gb=row["memory_gb"],
        metrics=json.loads(row["metrics_json"]), job_status=row["job_status"],
        exception=json.loads(row["exception_json"]) if row["exception_json"] else None,
        seconds=row["seconds"], hypothesis=row["hypothesis"], parent=row["parent"],
        fix_of=row["fix_of"], proposal_id=row["proposal_id"], started_at=row["started_at"],
        ended_at=row["ended_at"], llm_tokens=row["llm_tokens"],
        llm_cost_usd=row["llm_cost_usd"], proposal_source=row["proposal_source"],
        node=row["node"], arm=row["arm"], arm_probability=row["arm_probability"],
        llm_failure=row["llm_failure"])
