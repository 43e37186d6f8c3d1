"""The read side of RunService and MemoryService over a store, for one principal: the
rules of GetRun, ListRuns (paging), GetArtifact, WatchRun and ListLessons.

The servicers (runs_service.py, memory_service.py) and the CLI's store reader
(controller/commands/store_client.py) answer from here, so a run read through a
controller and one read from the state dir follow the same rules: the same page tokens
and page-size cap, the same NOT_FOUND for another principal's run
(controller/research/access.py), the same end of a watch.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.api import convert, pages
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.errors import FieldError
from controller.principals import Principal
from controller.research import access
from controller.research.level2 import report as mechanism_report
from controller.store.artifacts import ArtifactStore, content_type
from controller.store.memory import MemoryStore
from controller.store.records import Cursor, EventKind, RunState
from controller.store.runs import RunStore

DEFAULT_PAGE = 50
MAX_PAGE = 500
DEFAULT_LESSONS = 100
MAX_LESSONS = 10_000


def required(value: str, field: str) -> str:
    if not value:
        raise FieldError(field, "is required")
    return value


def page_of(request: rpb.ListRunsRequest) -> tuple[int, Cursor | None]:
    """(page size, cursor) a ListRuns request asks for; FieldError for a size over
    MAX_PAGE or a token no ListRuns handed out."""
    if not 0 <= request.page_size <= MAX_PAGE:
        raise FieldError("page_size", f"must be in [0, {MAX_PAGE}] (0: {DEFAULT_PAGE})")
    return request.page_size or DEFAULT_PAGE, pages.decode(request.page_token)


def lesson_limit(request: rpb.ListLessonsRequest) -> int:
    if not 0 <= request.limit <= MAX_LESSONS:
        raise FieldError("limit", f"must be in [0, {MAX_LESSONS}] (0: {DEFAULT_LESSONS})")
    return request.limit or DEFAULT_LESSONS


@dataclass(frozen=True)
class WatchStep:
    """What a watch sends next: `events` in order, the last one's `seq`, and whether the
    stream ends after them (else, with no events, it waits for more)."""

    events: list[rpb.RunEvent]
    seq: int
    end: bool


class RunQueries:
    def __init__(self, store: RunStore, artifacts: ArtifactStore) -> None:
        self.store = store
        self.artifacts = artifacts

    def get_run(self, request: rpb.GetRunRequest, by: Principal) -> rpb.Run:
        run_id = required(request.run_id, "run_id")
        record = access.readable(self.store, run_id, by)
        return convert.run(record, mechanism_report.summaries(self.store, run_id))

    def list_runs(self, request: rpb.ListRunsRequest, by: Principal) -> rpb.ListRunsResponse:
        """Newest first, the runs `by` sees, one page (page_size, at most MAX_PAGE)."""
        size, after = page_of(request)
        runs, cursor = self.store.list_runs(size, after, access.listed_owner(by))
        return rpb.ListRunsResponse(runs=[convert.run(r) for r in runs],
                                    next_page_token=pages.encode(cursor))

    def artifact(self, request: rpb.GetArtifactRequest, by: Principal) -> rpb.Artifact:
        """A run artifact, a trial's (trials/N/...) or the best's (best/...), or the
        mechanism report and sources (research/level2/report.py)."""
        run_id = required(request.run_id, "run_id")
        name = required(request.name, "name")
        run = access.readable(self.store, run_id, by)
        data = mechanism_report.artifact(self.store, run_id, name)
        if data is None:
            editable = str(run.settings.get("task", {}).get("editable", "train.py"))
            data = self.artifacts.read(run_id, name, run.best_trial, editable)
        return rpb.Artifact(name=name, content_type=content_type(name), content=data)

    def open_watch(self, request: rpb.WatchRunRequest, by: Principal) -> tuple[str, int]:
        """(run id, seq to start after) of a watch `by` may make; NOT_FOUND early (the
        owner of a run never changes, so once is enough)."""
        run_id = required(request.run_id, "run_id")
        if request.after_seq < 0:
            raise FieldError("after_seq", "must be >= 0")
        access.readable(self.store, run_id, by)
        return run_id, request.after_seq

    def watch_step(self, run_id: str, seq: int) -> WatchStep:
        """The stored events after `seq`. The stream ends at run_finished, at a
        run_paused the run is still in (an earlier pause of a resumed run does not end
        it), or, with no event left, once the run is not running."""
        run = self.store.get_run(run_id)  # state first: once terminal, every event is in
        records = self.store.events_after(run_id, seq)
        events = []
        for record in records:
            events.append(convert.event(record))
            seq = record.seq
            if record.kind is EventKind.RUN_FINISHED or (
                    record.kind is EventKind.RUN_PAUSED and self._still_paused(run_id, seq)):
                return WatchStep(events, seq, end=True)
        return WatchStep(events, seq, end=not records and run.state is not RunState.RUNNING)

    def _still_paused(self, run_id: str, seq: int) -> bool:
        return self.store.get_run(run_id).state is RunState.PAUSED and \
            not self.store.events_after(run_id, seq, 1)


def list_lessons(memory: MemoryStore, request: rpb.ListLessonsRequest, by: Principal,
                 shared: bool) -> rpb.ListLessonsResponse:
    """The lessons `by`'s runs learn from: its own, or everyone's with `shared`
    (memory.shared) or for an admin."""
    limit = lesson_limit(request)
    owner = None if shared else access.listed_owner(by)
    lessons = memory.list(request.task or None, limit, owner)
    return rpb.ListLessonsResponse(lessons=[convert.lesson(x) for x in lessons])
