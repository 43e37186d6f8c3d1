"""Every LLM call of a run, prompt and answer in full, with its usage: the audit trail,
the per-call/per-trial/per-run accounting, and the source a replay reads."""

from __future__ import annotations

import json
from typing import Any

from controller.llm.accounting import CallRecord
from controller.llm.types import LLMResponse
from controller.store.db import Database
from controller.store.records import RUN_HINT, NotFoundError


class CallLog:
    def __init__(self, store: Database) -> None:
        self.store = store

    def record(self, run_id: str, call: CallRecord) -> None:
        """Store the call and add its usage to the run's totals, in one transaction."""
        with self.store.transaction() as tx:
            seq = tx.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM llm_calls WHERE "
                                "run_id = ?", (run_id,)).fetchone()[0]
            tx.db.execute(
                "INSERT INTO llm_calls (run_id, seq, trial, call, purpose, proposal_id, "
                "provider, model, record_json, error, input_tokens, output_tokens, cost_usd,"
                " time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, seq, call.tag.trial, call.tag.call, call.tag.purpose,
                 call.tag.proposal_id, call.provider, call.model, json.dumps(call.to_dict()),
                 call.error, call.input_tokens, call.output_tokens, call.cost_usd, call.time))
            tx.db.execute("UPDATE runs SET llm_tokens_used = llm_tokens_used + ?, "
                          "llm_cost_usd = llm_cost_usd + ? WHERE id = ?",
                          (call.input_tokens + call.output_tokens, call.cost_usd, run_id))

    def usage_of(self, owner: str, since: float) -> tuple[int, float]:
        """(tokens, USD) the calls of `owner`'s runs used since `since` (a time.time()),
        every attempt counted, failed ones included (llm/spend.py's daily quotas)."""
        rows = self.store.query(
            "SELECT COALESCE(SUM(c.input_tokens + c.output_tokens), 0) AS tokens, "
            "COALESCE(SUM(c.cost_usd), 0.0) AS usd FROM llm_calls c JOIN runs r ON "
            "r.id = c.run_id WHERE r.owner = ? AND c.time >= ?", (owner, since))
        return int(rows[0]["tokens"]), float(rows[0]["usd"])

    def calls(self, run_id: str, proposal_id: str | None = None) -> list[dict[str, Any]]:
        """The stored calls in order, each as CallRecord.to_dict() plus its seq."""
        sql = "SELECT seq, record_json FROM llm_calls WHERE run_id = ?"
        args: tuple[Any, ...] = (run_id,)
        if proposal_id is not None:
            sql += " AND proposal_id = ?"
            args += (proposal_id,)
        rows = self.store.query(sql + " ORDER BY seq", args)
        return [{"seq": r["seq"], **json.loads(r["record_json"])} for r in rows]

    def replay_answers(self, run_id: str) -> dict[tuple[int, int], LLMResponse]:
        """(trial, call) -> the answer the run's trials were built from: successful calls
        of each begun trial's own proposal (not of proposals a stop threw away)."""
        if not self.store.query("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise NotFoundError("run", run_id, RUN_HINT)
        rows = self.store.query(
            "SELECT c.trial, c.call, c.record_json FROM llm_calls c JOIN trials t ON "
            "t.run_id = c.run_id AND t.idx = c.trial AND t.proposal_id = c.proposal_id "
            "WHERE c.run_id = ? AND c.error = '' ORDER BY c.seq", (run_id,))
        out: dict[tuple[int, int], LLMResponse] = {}
        for row in rows:
            rec = json.loads(row["record_json"])
            out[(row["trial"], row["call"])] = LLMResponse(
                text=rec["response"], input_tokens=rec["input_tokens"],
                output_tokens=rec["output_tokens"], model=rec["model"])
        return out
