"""The error of every setting: a field of a request, a key of the controller's
configuration, a flag of a command.

Every settings dataclass raises FieldError from its `validate()`, naming the setting
(`budgets.max_trials`, `sandbox.ray.address`, `limits.memory_bytes`) and saying what
would be valid. The API answers it as INVALID_ARGUMENT naming the field
(controller/api/errors.py); the configuration loader (controller/config_file.py) adds
where the value came from (the file, an environment variable, a flag).
"""

from __future__ import annotations


class FieldError(ValueError):
    """A setting is invalid. `field` is its name, e.g. "budgets.max_trials"; `reason`
    says what would be valid."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[FieldError], tuple[str, str]]:
        return type(self), (self.field, self.reason)  # picklable across processes
