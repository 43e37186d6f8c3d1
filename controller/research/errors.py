"""Domain errors the API maps to precise gRPC status codes (see controller/api/errors.py)."""

from __future__ import annotations


class FieldError(ValueError):
    """A request field is invalid. `field` is its path in the request, e.g.
    "budgets.max_trials"; the message says what would be valid."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CapacityError(RuntimeError):
    """The server is at a configured limit; retry later. `resource` names the limit."""

    def __init__(self, resource: str, message: str) -> None:
        super().__init__(message)
        self.resource = resource


class StateConflict(RuntimeError):
    """The request does not fit the resource's current state (e.g. cancelling a run
    that has finished). `subject` names the resource."""

    def __init__(self, subject: str, message: str) -> None:
        super().__init__(message)
        self.subject = subject
