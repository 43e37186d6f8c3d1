"""The autoresearch task: data preparation, the editable train.py and its trusted harness.

Installed read-only in the sandbox image (torch and numpy only there), so importing the
package must stay cheap and must not pull host-only dependencies: modules are imported
where they are used (`from trainer import harness`), and `save_model` is loaded lazily.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "save_model":
        from trainer.harness import save_model

        return save_model
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
