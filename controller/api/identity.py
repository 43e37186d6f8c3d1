"""The principal of the call being served, as the edge resolved it.

The edge (controller/api/edge.py) sets `principals.CURRENT` in the call's own task
before the handler runs; a streaming handler's generator runs in that task too, and
`asyncio.to_thread` copies the context, so a servicer and the threads it starts read
the same value with `caller()`.
"""

from __future__ import annotations

from controller import principals
from controller.principals import Principal


def caller() -> Principal:
    """The calling principal; RuntimeError (a bug: INTERNAL) outside a call the edge let
    through, so a handler never runs as nobody."""
    principal = principals.CURRENT.get()
    if principal is None:
        raise RuntimeError("no principal for this call: the edge did not resolve one")
    return principal
