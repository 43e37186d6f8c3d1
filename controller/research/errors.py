"""Errors of runs as resources that the API maps to precise gRPC status codes (see
controller/api/errors.py); an invalid setting is controller/errors.py's FieldError."""

from __future__ import annotations


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
