"""A task directory's two-phase evaluation (the contract a task author relies on).

Phase 1, the untrusted candidate: a copy of the task directory without its data folders
and without the scorer's files, the candidate's editable file in place, the [train]
mounts read-only, `$TRIAL_SEED` set. Whatever it writes under `outputs` (relative to its
working directory) comes back, size-capped. Phase 2, the trusted scorer: a fresh
container with a fresh copy of the task directory (the baseline editable file, the
scorer), phase 1's outputs at the same relative path as untrusted input, the [score]
mounts. The metric is the scorer's: one JSON object on the last line of stdout, or in
`$BILEVEL_METRICS`. A task without [score] takes the metric from phase 1, and says so:
FORGEABLE is in its description, every summary and report.

Data folders reach jobs only as the backend's data copies of the task directory the
controller holds (the backend's ensure_data, controller/sandbox/backend.py), one per
content hash in the controller's namespace, claimed for the run whose view of the
backend the task was given.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.research.level1.protect import Protected
from controller.research.level1.space import SearchSpace
from controller.research.task import FORGEABLE, Objective, TrialOutcome, outcome_from_job
from controller.research.tasks.errors import TaskError
from controller.research.tasks.knob_rules import search_space
from controller.research.tasks.manifest import (
    Phase,
    TaskManifest,
    copied_files,
    phase1_files,
)
from controller.sandbox import bounded_json
from controller.sandbox.backend import OutputCallback, SandboxBackend
from controller.sandbox.job_output import metrics_of
from controller.sandbox.spec import (
    OUT_DIR,
    DataMount,
    JobResult,
    JobSpec,
    Limits,
    SpecError,
    Status,
)
from trainer.knobs import KnobValue

SEED_ENV = "TRIAL_SEED"
MAX_DATA_FILES = 100_000
MAX_DATA_BYTES = 4 << 30
LAST_LINE_CAPS = bounded_json.Caps(max_bytes=64 << 10, max_depth=8, max_str=4096,
                                   max_items=1000, nonfinite_null=True)
# A phase runs `python3 -c LINK n path1 target1 ... command...`: each path in the working
# directory becomes a link to its target (phase 1's `outputs` to /job/out, what the
# runner returns; a mount's relative target to where it is mounted), then the command
# replaces it.
_LINK = ("import os,sys;a=sys.argv;n=int(a[1])\nfor i in range(n):\n p,t=a[2+2*i],a[3+2*i];"
         "d=os.path.dirname(p);d and os.makedirs(d,exist_ok=True);os.symlink(t,p)\n"
         "os.execvp(a[2+2*n],a[2+2*n:])")


def linked(links: list[tuple[str, str]], command: tuple[str, ...]) -> tuple[str, ...]:
    """`command`, run after making each (path, target) link; itself when there are none."""
    if not links:
        return command
    pairs = [part for link in links for part in link]
    return ("python3", "-c", _LINK, str(len(links)), *pairs, *command)


def result_metrics(result: JobResult) -> dict[str, Any]:
    """The job's result: $BILEVEL_METRICS if it wrote any, else the JSON object on the
    last non-empty line of stdout (bounded), else {}."""
    if result.metrics:
        return dict(result.metrics)
    lines = [line for line in (result.stdout_tail or result.stdout_head).splitlines()
             if line.strip()]
    if not lines or not lines[-1].lstrip().startswith("{"):
        return {}
    try:
        value = bounded_json.loads(lines[-1], LAST_LINE_CAPS, "the last stdout line")
    except bounded_json.JSONLimitError:
        return {}
    metrics, _ = metrics_of(value)
    return metrics


def _limits(phase: Phase, returned_bytes: int) -> Limits:
    memory = phase.memory_mb << 20
    return Limits(wall_seconds=phase.wall_seconds, memory_bytes=memory, cpus=phase.cpus,
                  returned_file_bytes=returned_bytes, tmp_bytes=min(256 << 20, memory),
                  disk_bytes=max(256 << 20, returned_bytes * 2))


def folder_digest(folder: Path) -> str:
    """Content hash of a data folder (names and bytes); TaskError past the caps."""
    h = hashlib.sha256()
    count = total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise TaskError("task", f"{path} is a symlink; a task holds none")
        if not path.is_file():
            continue
        count += 1
        total += path.stat().st_size
        if count > MAX_DATA_FILES or total > MAX_DATA_BYTES:
            raise TaskError("task", f"data folder {folder.name} is over {MAX_DATA_FILES} "
                                    f"files or {MAX_DATA_BYTES} bytes")
        rel = path.relative_to(folder).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:24]


def _links(phase: Phase) -> list[tuple[str, str]]:
    """(relative target, mount point) of a phase's mounts given relative targets."""
    return [(m.link, m.target) for m in phase.mounts if m.link]


class ManifestTask:
    """A user's task directory as a Task (controller/research/task.py)."""

    allows_code_edits = True
    reports_progress = True  # evaluate takes on_output (research/level1/evaluation.py)

    def __init__(self, manifest: TaskManifest, executor: SandboxBackend | None,
                 runtime: str = "runc", image: str | None = None) -> None:
        if manifest.builtin or manifest.train is None:
            raise TaskError("builtin", "a builtin task is built by the registry")
        self.manifest = manifest
        self.name = manifest.name
        self.memory_key = f"{manifest.name}@{manifest.digest()}"
        self.executor = executor
        self.runtime = runtime
        self.image = image  # the task image when the manifest has requirements
        self.objective = Objective(manifest.metric, manifest.direction,
                                   self_reported=manifest.self_reported)
        self.document = manifest.document
        self.allows_code_edits = self.document.python  # a config's only edits are its keys
        self._baseline = manifest.editable_source()
        self._space = search_space(self.document, manifest.knobs,
                                   self.document.read(self._baseline))
        self.protected = Protected()
        scorer = ("a trusted scorer the candidate cannot see or change computes "
                  f"{manifest.metric} afterwards" if manifest.score else FORGEABLE)
        where = {"python": "its top-level constants named below are the knobs",
                 "flags": "it holds the values of train.command's flags, the knobs"}.get(
            self.document.kind, "its keys named below (dotted paths) are the knobs")
        self.description = (
            f"{manifest.description.strip() or f'Task {manifest.name}.'} "
            f"Objective: {self.objective.describe()}. The file you change is "
            f"{self.document.path}; {where}; {scorer}.")
        self._phase1 = phase1_files(manifest)
        self._phase2 = copied_files(manifest)
        self._data: dict[str, str] = {}  # folder -> the backend's data reference
        self._lock = threading.Lock()

    def baseline_source(self) -> str:
        return self._baseline

    def search_space(self) -> SearchSpace:
        return self._space

    def read_knobs(self, source: str) -> dict[str, Any]:
        return self.document.read(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return self.document.write(source, changes)

    def check_source(self, source: str) -> None:
        """Raises ValueError if `source` is not a valid editable file (see Validator)."""
        self.document.check(source)

    def _mounts(self, phase: Phase) -> tuple[DataMount, ...]:
        assert self.executor is not None
        mounts = []
        with self._lock:  # copied once per folder and content
            for m in phase.mounts:
                if m.source not in self._data:
                    folder = self.manifest.root / m.source
                    self._data[m.source] = self.executor.ensure_data(
                        f"taskdata-{folder_digest(folder)}", folder)
                mounts.append(DataMount(source=self._data[m.source], target=m.target))
        return tuple(mounts)

    def _spec(self, phase: Phase, files: dict[str, bytes], command: tuple[str, ...],
              returned: int, env: dict[str, str], label: str) -> JobSpec:
        return JobSpec(files=files, command=command, limits=_limits(phase, returned),
                       runtime=self.runtime, data_mounts=self._mounts(phase), env=env,
                       image=self.image, labels={"io.bilevel.phase": label})

    def evaluate(self, source: str, seed: int, cancel: threading.Event,
                 on_output: OutputCallback | None = None) -> TrialOutcome:
        """`on_output` hears phase 1's output as it runs (the candidate's progress lines,
        research/level1/progress.py); the scorer's is not passed on."""
        if self.executor is None:
            raise TaskError("task", "a task directory's trials run in the sandbox; "
                                    "no executor was given")
        m, train = self.manifest, self.manifest.train
        assert train is not None
        # Phase 1 gets neither the scorer's files nor its mounts: the candidate can
        # neither read the evaluation data nor learn how it is scored.
        files = {**self._phase1, m.editable: source.encode()}
        argv = train.command
        if self.document.kind == "flags":
            try:
                argv = self.document.render(self.document.read(source))
            except (ValueError, KeyError) as exc:  # a code edit broke flags.json
                return TrialOutcome(job_status=Status.ERROR.value, val_bpb=None, detail=(
                    f"{self.document.path} does not give every flag a value: {exc}"))
        command = linked([(train.outputs, OUT_DIR), *_links(train)], argv)
        first = self.executor.run_job(self._spec(
            train, files, command, train.output_mb << 20, {SEED_ENV: str(int(seed))},
            "train"), cancel=cancel, on_output=on_output)
        if first.status is not Status.OK or m.score is None:
            claimed = {} if m.score is not None else result_metrics(first)
            outcome = outcome_from_job(first, claimed, self.objective)
            if m.score is None and not outcome.crashed:
                outcome = replace(outcome, detail=FORGEABLE)
            return outcome
        inputs = {f"{train.outputs}/{rel}": data for rel, data in first.files.items()}
        try:
            second = self.executor.run_job(self._spec(
                m.score, {**self._phase2, **inputs}, linked(_links(m.score), m.score.command),
                1 << 20, {}, "score"),
                cancel=cancel)
        except SpecError as exc:  # e.g. outputs past the files cap: the candidate's doing
            return TrialOutcome(job_status=Status.ERROR.value, val_bpb=None, exception={
                "type": "SpecError", "message": str(exc), "frames": []},
                log=outcome_from_job(first, {}).log, seconds=first.timings.run_s,
                detail=f"phase 1's outputs cannot be handed to the scorer: {exc}")
        scored = result_metrics(second)  # only the trusted scorer's number counts
        outcome = outcome_from_job(second, scored, self.objective)
        log = (outcome_from_job(first, {}).log + "\n=== trusted scorer ===\n" + outcome.log)
        detail = outcome.detail
        if second.status is not Status.OK:
            detail = f"the trusted scorer ended with status {second.status.value}" + (
                f": {detail}" if detail else "")
        return replace(outcome, log=log, detail=detail,
                       seconds=first.timings.run_s + second.timings.run_s)
