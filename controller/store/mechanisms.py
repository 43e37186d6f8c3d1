"""The mechanism layer's records in the store: every hook call on every trial, each
mechanism a run tried (its source, origin, gates, status, saved state), and the outer
levels' own state, so a restarted controller resumes them where they were.

Read API (for reports and ablations; all ordered, all plain data):

    MechanismLog(store).calls(run_id, trial=None) -> [HookCall]
        one row per hook call: trial, mechanism, hook, effect, effective, seconds,
        detail, proposals (JSON list), failure (JSON or None)
    MechanismLog(store).mechanisms(run_id) -> [MechanismRow]
        one row per mechanism the run tried, in the order it was first tried
    RunStore.mechanism_records / RunStore.mechanisms delegate to these.

L1.5 and L2 decisions are run events (kinds `config_adjusted` and `mechanism`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from controller.store.db import Database, Tx

# Statuses of a mechanism row.
PROPOSED = "proposed"  # written by Level 2, not gated yet
GATE_REJECTED = "gate_rejected"  # stopped by the static or contract gate, or activation
ACTIVE = "active"  # running in the loop (on trial while `window_end` is set)
KEPT = "kept"  # survived its window; still active
REVERTED = "reverted"  # hurt or never acted over its window; deactivated
DISABLED = "disabled"  # failed at runtime; the MechanismSet killed it
LIVE = (ACTIVE, KEPT)


@dataclass
class MechanismRow:
    """One mechanism a run tried. `origin`: "initial", "library" or "llm"; `field`: the
    field the mechanism came from as the LLM stated it (or the library rule's reason)."""

    name: str
    origin: str
    source: str
    status: str = PROPOSED
    field: str = ""
    description: str = ""
    round: int = 0  # the Level-2 round that made it (0: the starting set)
    activated_at: int | None = None  # first trial it could act on
    window_end: int | None = None  # last trial of its scoring window
    ended_at: int | None = None
    reason: str = ""  # why it was rejected, reverted, disabled or kept
    gates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failure: dict[str, Any] | None = None
    traceback: str = ""
    score: dict[str, Any] = dataclasses.field(default_factory=dict)  # before/after window scores
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # L2 prompts and outputs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MechanismRow:
        return cls(**raw)


@dataclass(frozen=True)
class HookCall:
    trial: int
    mechanism: str
    hook: str
    effect: str
    effective: bool
    seconds: float
    detail: str
    proposals: list[dict[str, Any]]
    failure: dict[str, Any] | None
    skipped: tuple[str, ...] = ()  # answers left out (e.g. a frozen knob), with why


@dataclass(frozen=True)
class Outcome:
    """How a mechanism fared in an earlier run: Level 2's offline choice learns from it."""

    run_id: str
    task: str
    name: str
    origin: str
    status: str
    effect: float | None  # the verdict's with-minus-without score difference, in σ


class MechanismLog:
    def __init__(self, store: Database) -> None:
        self.store = store

    # Writes

    @staticmethod
    def write_calls(tx: Tx, run_id: str, trial: int, records: list[dict[str, Any]],
                    states: dict[str, Any] | None) -> None:
        """Inside finish_trial's transaction: the trial's hook calls and the states the
        mechanisms saved after observing it (so a resume continues from exactly here)."""
        seq = tx.db.execute("SELECT COALESCE(MAX(seq), 0) FROM mechanism_calls WHERE "
                            "run_id = ? AND trial = ?", (run_id, trial)).fetchone()[0]
        for i, rec in enumerate(records, start=seq + 1):
            tx.db.execute(
                "INSERT INTO mechanism_calls (run_id, trial, seq, mechanism, hook, effect, "
                "effective, seconds, record_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, trial, i, rec["mechanism"], rec["hook"], rec["effect"],
                 int(rec["effective"]), rec["seconds"], json.dumps(rec)))
        for name, state in (states or {}).items():
            tx.db.execute("UPDATE mechanisms SET state_json = ?, updated_at = ? WHERE "
                          "run_id = ? AND name = ?",
                          (json.dumps(state), time.time(), run_id, name))

    def put(self, run_id: str, row: MechanismRow) -> None:
        """Insert or update a mechanism row (its saved state is kept)."""
        with self.store.transaction() as tx:
            ord_ = tx.db.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM mechanisms WHERE "
                                 "run_id = ?", (run_id,)).fetchone()[0]
            tx.db.execute(
                "INSERT INTO mechanisms (run_id, name, ord, row_json, updated_at) VALUES "
                "(?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO UPDATE SET row_json = "
                "excluded.row_json, updated_at = excluded.updated_at",
                (run_id, row.name, ord_, json.dumps(row.to_json()), time.time()))

    def set_outer_state(self, run_id: str, key: str, value: dict[str, Any]) -> None:
        with self.store.transaction() as tx:
            tx.db.execute("INSERT INTO outer_state (run_id, key, value_json) VALUES (?, ?, ?)"
                          " ON CONFLICT (run_id, key) DO UPDATE SET value_json = "
                          "excluded.value_json", (run_id, key, json.dumps(value)))

    # Reads

    def outer_state(self, run_id: str, key: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT value_json FROM outer_state WHERE run_id = ? AND "
                                "key = ?", (run_id, key))
        return json.loads(rows[0]["value_json"]) if rows else None

    def calls(self, run_id: str, trial: int | None = None) -> list[HookCall]:
        sql = "SELECT trial, record_json FROM mechanism_calls WHERE run_id = ?"
        args: tuple[Any, ...] = (run_id,)
        if trial is not None:
            sql += " AND trial = ?"
            args += (trial,)
        out = []
        for row in self.store.query(sql + " ORDER BY trial, seq", args):
            r = json.loads(row["record_json"])
            out.append(HookCall(trial=row["trial"], mechanism=r["mechanism"], hook=r["hook"],
                                effect=r["effect"], effective=bool(r["effective"]),
                                seconds=float(r["seconds"]), detail=r.get("detail", ""),
                                proposals=list(r.get("proposals", [])),
                                failure=r.get("failure"),
                                skipped=tuple(str(x) for x in r.get("skipped", []))))
        return out

    def outcomes(self, exclude_run: str, owner: str | None = None) -> list[Outcome]:
        """Every judged mechanism of the other runs in this store (kept, reverted or
        disabled) that belong to principal `owner` (None: to anyone), oldest run first,
        with the run's task preset."""
        rows = self.store.query(
            "SELECT m.run_id, m.row_json, r.settings_json FROM mechanisms m JOIN runs r ON "
            "r.id = m.run_id WHERE m.run_id != ? AND (? IS NULL OR r.owner = ?) "
            "ORDER BY r.rowid, m.ord", (exclude_run, owner, owner))
        out = []
        for row in rows:
            raw = json.loads(row["row_json"])
            if raw.get("status") not in (KEPT, REVERTED, DISABLED):
                continue
            task = json.loads(row["settings_json"]).get("task", {}).get("preset", "")
            effect = (raw.get("score") or {}).get("effect")
            out.append(Outcome(row["run_id"], str(task), str(raw["name"]),
                               str(raw.get("origin", "")), str(raw["status"]),
                               float(effect) if isinstance(effect, int | float) else None))
        return out

    def mechanisms(self, run_id: str) -> list[MechanismRow]:
        rows = self.store.query("SELECT row_json FROM mechanisms WHERE run_id = ? ORDER BY "
                                "ord", (run_id,))
        return [MechanismRow.from_json(json.loads(r["row_json"])) for r in rows]

    def saved_state(self, run_id: str, name: str) -> Any:
        rows = self.store.query("SELECT state_json FROM mechanisms WHERE run_id = ? AND "
                                "name = ?", (run_id, name))
        if not rows or rows[0]["state_json"] is None:
            return None
        return json.loads(rows[0]["state_json"])
