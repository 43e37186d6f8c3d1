"""Run artifacts as plain files under the state dir, written atomically and fsynced.

Layout: runs/<run_id>/results.tsv and runs/<run_id>/trials/<n>/{train.py,diff,log,llm.json}
(llm.json: every prompt and answer that made the trial's proposal), and
runs/<run_id>/final_check.json (the best and the baseline re-run on fresh seeds at the end).
"best/train.py" is not a file of its own: it names the incumbent trial's train.py. A task
whose editable file has another path serves it under that path too (`best/<path>`,
`trials/<n>/<path>`): the name a user knows it by.
"task/<path>" is a file of the task directory the run was created with, as stored
(runs/<run_id>/task/, see store/task_bundle.py).
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from pathlib import Path

from controller.store.records import NotFoundError

TRIAL_FILES = ("train.py", "diff", "log", "llm.json")
RUN_FILES = ("results.tsv", "final_check.json")
NAME_PATTERN = re.compile(r"^(best/train\.py|results\.tsv|final_check\.json|"
                          r"trials/(0|[1-9]\d{0,6})/(train\.py|diff|log|llm\.json))$")
CONTENT_TYPES = {"train.py": "text/x-python", "diff": "text/x-diff", "log": "text/plain",
                 "results.tsv": "text/tab-separated-values", "llm.json": "application/json",
                 "final_check.json": "application/json"}


class BadArtifactName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown artifact name {name!r}: use best/train.py, results.tsv, "
            f"final_check.json, task/<path> (a run of a task directory) or "
            f"trials/<n>/{{{','.join(TRIAL_FILES)}}}")
        self.name = name


def editable_alias(name: str, editable: str) -> str:
    """`best/<editable>` and `trials/<n>/<editable>` as the train.py names they alias."""
    if editable == "train.py":
        return name
    if name == f"best/{editable}":
        return "best/train.py"
    head, _, rest = name.partition("/")
    index, _, file = rest.partition("/")
    if head == "trials" and file == editable:
        return f"trials/{index}/train.py"
    return name


def content_type(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base in CONTENT_TYPES:
        return CONTENT_TYPES[base]
    # mechanisms.md and mechanisms/<name>.py (served from the store, see mechanism_report)
    return {".md": "text/markdown", ".py": "text/x-python"}.get(
        Path(base).suffix, "application/octet-stream")


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _run_dir(self, run_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
            raise NotFoundError("run", run_id)
        return self.root / run_id

    def trial_path(self, run_id: str, index: int, name: str) -> Path:
        assert name in TRIAL_FILES
        return self._run_dir(run_id) / "trials" / str(index) / name

    def write_trial(self, run_id: str, index: int, name: str, data: bytes) -> None:
        _atomic_write(self.trial_path(run_id, index, name), data)

    def write_results(self, run_id: str, tsv: str) -> None:
        _atomic_write(self._run_dir(run_id) / "results.tsv", tsv.encode())

    def write_run(self, run_id: str, name: str, data: bytes) -> None:
        """A file of the run as a whole (RUN_FILES)."""
        assert name in RUN_FILES
        _atomic_write(self._run_dir(run_id) / name, data)

    def read_trial(self, run_id: str, index: int, name: str) -> bytes:
        path = self.trial_path(run_id, index, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError("artifact", f"trials/{index}/{name}",
                                f"run {run_id} has no such trial file yet") from None

    def read(self, run_id: str, name: str, best_trial: int | None,
             editable: str = "train.py") -> bytes:
        """Read a named artifact (`editable`: the path of the run's editable file, an
        alias of train.py); raises BadArtifactName or NotFoundError."""
        if name.startswith("task/"):
            return self._read_task_file(run_id, name)
        name = editable_alias(name, editable)
        match = NAME_PATTERN.match(name)
        if match is None:
            raise BadArtifactName(name)
        if name == "best/train.py":
            if best_trial is None:
                raise NotFoundError("artifact", name, "the baseline has not finished yet")
            return self.read_trial(run_id, best_trial, "train.py")
        if name in RUN_FILES:
            try:
                return (self._run_dir(run_id) / name).read_bytes()
            except FileNotFoundError:
                why = ("no trial has finished yet" if name == "results.tsv" else
                       "the run has not finished with a best to re-evaluate")
                raise NotFoundError("artifact", name, why) from None
        return self.read_trial(run_id, int(match.group(2)), match.group(3))


    def _read_task_file(self, run_id: str, name: str) -> bytes:
        rel = name.removeprefix("task/")
        norm = posixpath.normpath(rel) if rel else ""
        if not rel or norm != rel or rel.startswith("/") or norm.split("/")[0] == "..":
            raise BadArtifactName(name)
        root = self._run_dir(run_id) / "task"
        path = root / rel
        if not root.is_dir():
            raise NotFoundError("artifact", name, f"run {run_id} was not created from a "
                                "task directory")
        if path.is_symlink() or not path.is_file():  # a stored task holds no links
            raise NotFoundError("artifact", name, f"the task of run {run_id} has no "
                                f"file {rel!r}")
        return path.read_bytes()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
