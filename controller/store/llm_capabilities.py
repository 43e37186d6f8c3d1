"""Negotiated capabilities of LLM endpoints (controller/llm/capabilities.py), per base URL
and model, with why each was learned: shared by every run of this controller."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from controller.store.db import Database


class CapabilityStore:
    def __init__(self, store: Database) -> None:
        self.store = store

    def get(self, base_url: str, model: str) -> Mapping[str, str]:
        rows = self.store.query("SELECT values_json FROM llm_capabilities WHERE base_url = ? "
                                "AND model = ?", (base_url, model))
        if not rows:
            return {}
        values = json.loads(rows[0]["values_json"])
        return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}

    def put(self, base_url: str, model: str, values: Mapping[str, str], reason: str) -> None:
        with self.store.transaction() as tx:
            tx.db.execute(
                "INSERT INTO llm_capabilities (base_url, model, values_json, reason, time) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (base_url, model) DO UPDATE SET "
                "values_json = excluded.values_json, reason = excluded.reason, "
                "time = excluded.time", (base_url, model, json.dumps(dict(values)),
                                         reason[:500], time.time()))

    def reason(self, base_url: str, model: str) -> str:
        rows = self.store.query("SELECT reason FROM llm_capabilities WHERE base_url = ? AND "
                                "model = ?", (base_url, model))
        return str(rows[0]["reason"]) if rows else ""
