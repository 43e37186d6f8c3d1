"""The error of a task directory: its manifest or its files are invalid."""

from __future__ import annotations

from controller.errors import FieldError


class TaskError(FieldError):
    """A task directory or its manifest is invalid; `field` names the manifest key."""
