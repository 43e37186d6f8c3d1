"""Tasks by name or directory. Every task is a task directory with a bilevel-task.toml
(controller/research/tasks/manifest.py); the built-ins ship in trainer/tasks/ and
`preset` names them (`surrogate`, `cpu-tiny`, `gpu-5min`). A builtin manifest is run by
the controller's own runner (SurrogateTask, TrainerTask); any other by ManifestTask."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from controller.errors import FieldError
from controller.research.settings import TaskSettings
from controller.research.task import Task
from controller.research.tasks import trainer
from controller.research.tasks.generic import ManifestTask
from controller.research.tasks.manifest import TaskManifest, load_task_dir
from controller.research.tasks.surrogate import SurrogateTask
from controller.sandbox.backend import SandboxBackend

BUILTIN_DIR = Path(__file__).resolve().parents[3] / "trainer" / "tasks"


def preset_names() -> tuple[str, ...]:
    return ("surrogate", *trainer.preset_names())


def builtin_dir(preset: str) -> Path:
    """The shipped task directory of a preset; FieldError for an unknown one."""
    if preset not in preset_names():
        raise FieldError("task.preset", f"unknown preset {preset!r}; "
                         f"choose one of {', '.join(preset_names())}")
    return BUILTIN_DIR / preset


def resolve_task_dir(name_or_dir: str) -> Path:
    """`--task` accepts a directory or a preset's short name."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    if name_or_dir in preset_names():
        return builtin_dir(name_or_dir)
    raise FieldError("task", f"{name_or_dir!r} is neither a task directory nor a preset "
                             f"({', '.join(preset_names())})")


def make_task(settings: TaskSettings, executor: SandboxBackend,
              proposer_mode: str = "params", task_dir: Path | None = None,
              image: str | None = None) -> Task:
    """Build the run's task: from `task_dir` (a task directory the controller holds),
    else the built-in task directory `settings.preset` names. Raises FieldError."""
    manifest = load_task_dir(task_dir if task_dir is not None else builtin_dir(settings.preset))
    return task_of(manifest, settings, executor, proposer_mode, image)


def task_from_dir(path: str | Path, executor: SandboxBackend | None, runtime: str = "runc",
                  proposer_mode: str = "params", image: str | None = None) -> Task:
    """A task directory (or preset name) as a Task, for callers without RunSettings."""
    manifest = load_task_dir(resolve_task_dir(str(path)))
    settings = TaskSettings(preset=manifest.builtin or manifest.name, runtime=runtime)
    return task_of(manifest, settings, executor, proposer_mode, image)  # type: ignore[arg-type]


def task_of(manifest: TaskManifest, settings: TaskSettings, executor: SandboxBackend,
            proposer_mode: str = "params", image: str | None = None) -> Task:
    """The Task a loaded manifest describes; code mode is refused on the surrogate (its
    metric is computed by the controller from the knobs; a code edit could only try to
    forge it)."""
    if manifest.builtin == "surrogate":
        if settings.data_ref:
            raise FieldError("task.data_ref", "the surrogate task reads no data")
        if proposer_mode == "code":
            raise FieldError("proposer.mode", "the surrogate task takes knob changes only "
                             "(mode \"params\"): its val_bpb is computed from the knobs, "
                             "so code edits are no experiment there")
        # in_process: the knobs are scored here as always, and the file is not also run.
        return SurrogateTask(None if settings.in_process else executor,
                             baseline=settings.train_py, runtime=settings.runtime)
    if settings.in_process:
        raise FieldError("task.in_process", "only the surrogate task can be scored in the "
                         "controller (its value is a function of the knobs); every other "
                         "task's code must run in a sandbox")
    if manifest.builtin:
        return trainer.TrainerTask(replace(settings, preset=manifest.builtin), executor)
    if settings.data_ref:
        raise FieldError("task.data_ref", "a task directory mounts its own data folders")
    if settings.train_py is not None:
        raise FieldError("task.train_py", f"a task directory's baseline is its "
                                          f"{manifest.editable}; change it there")
    return ManifestTask(manifest, executor, runtime=settings.runtime, image=image)
