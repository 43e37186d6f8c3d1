"""Task presets by name: `surrogate` and the real trainer's presets (`cpu-tiny`,
`gpu-5min`, from trainer/presets.py)."""

from __future__ import annotations

from controller.research.errors import FieldError
from controller.research.settings import TaskSettings
from controller.research.task import Task
from controller.research.tasks import trainer
from controller.research.tasks.surrogate import SurrogateTask
from controller.sandbox.executor import SandboxExecutor


def preset_names() -> tuple[str, ...]:
    return ("surrogate", *trainer.preset_names())


def make_task(settings: TaskSettings, executor: SandboxExecutor,
              proposer_mode: str = "params") -> Task:
    """Build the task a run's settings name; raises FieldError for an unknown preset, or
    for code mode on the surrogate (its metric is a function of the knobs alone, and
    computed by the controller; a code edit could only try to forge it)."""
    if settings.preset == "surrogate":
        if settings.data_ref:
            raise FieldError("task.data_ref", "the surrogate task reads no data")
        if proposer_mode == "code":
            raise FieldError("proposer.mode", "the surrogate task takes knob changes only "
                             "(mode \"params\"): its val_bpb is computed from the knobs, "
                             "so code edits are no experiment there")
        return SurrogateTask(executor, baseline=settings.train_py, runtime=settings.runtime)
    if settings.preset in trainer.preset_names():
        return trainer.TrainerTask(settings, executor)
    raise FieldError("task.preset", f"unknown preset {settings.preset!r}; "
                     f"choose one of {', '.join(preset_names())}")
