"""ListRuns page tokens: opaque to clients, naming only the last run of the page.

A token holds that run's creation time and id, both of which the caller was just
shown: it reveals nothing of other principals' runs (no row number, no count), and a
token replayed by another principal pages through that principal's own runs only.
"""

from __future__ import annotations

import base64
import math

from controller.errors import FieldError
from controller.store.records import Cursor

PREFIX = "v2:"


def encode(cursor: Cursor | None) -> str:
    """The next_page_token of a page ("" on the last)."""
    if cursor is None:
        return ""
    raw = f"{PREFIX}{cursor.created_at!r}:{cursor.run_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(token: str) -> Cursor | None:
    """The cursor a page_token names (None: the first page); FieldError for anything
    that is not a token ListRuns handed out."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        when, _, run_id = raw.removeprefix(PREFIX).partition(":")
        created_at = float(when)
        if not raw.startswith(PREFIX) or not run_id or not math.isfinite(created_at):
            raise ValueError(raw)
    except ValueError:
        raise FieldError("page_token", "is not a token from a previous ListRuns") from None
    return Cursor(created_at, run_id)
