"""The loop's view of running trials' progress: each trial's curve from its job's stdout
(progress.py), stored (store/curves.py) and streamed as `trial_progress` events at a
bounded rate, and the run's pruner (pruners.py) applied on every new point, cancelling a
hopeless trial's job through its own cancel event.

Called from the jobs' output threads; one lock guards the curves. The baseline's curve
is recorded but never pruned: it is every later trial's first reference.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import structlog

from controller.research.level1.progress import Curve, LineReader, Point
from controller.research.level1.pruners import Pruner
from controller.research.task import Objective
from controller.store import curves
from controller.store.records import EventKind, TrialStatus
from controller.store.runs import RunStore

log = structlog.get_logger(__name__)
SAVE_SECONDS = 1.0  # a running trial's curve is stored and announced at most this often
DECIDE_SECONDS = 0.25  # and judged by the pruner at most this often
OutputCallback = Callable[[str, bytes], None]


class TrialCancel(threading.Event):
    """A trial's own cancel: set by its pruning, and reads as set once the run's stop
    event is (the sandbox polls is_set)."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            super().wait(0.2 if left is None else min(left, 0.2))
        return True


class _Live:
    def __init__(self, metric: str, cancel: TrialCancel, prunable: bool) -> None:
        self.reader = LineReader(metric)
        self.curve = Curve()
        self.cancel = cancel
        self.prunable = prunable
        self.pruned = ""
        self.saved_at = self.decided_at = 0.0
        self.dirty = False


class ProgressWatch:
    def __init__(self, run_id: str, store: RunStore, objective: Objective,
                 pruner: Pruner | None, stop: threading.Event) -> None:
        self.run_id = run_id
        self.store = store
        self.objective = objective
        self.pruner = pruner
        self.stop = stop
        self._lock = threading.Lock()
        self._live: dict[int, _Live] = {}
        self._curves: dict[int, list[Point]] = curves.load(store, run_id)  # shown units
        self._losses = {i: self._loss(c) for i, c in self._curves.items()}
        self._completed = {t.index for t in store.trials(run_id) if t.finished
                           and t.status in (TrialStatus.KEEP, TrialStatus.DISCARD)}

    def begin(self, index: int, prunable: bool = True) -> TrialCancel:
        """A fresh curve for trial `index` (a re-run starts over) and its cancel event."""
        cancel = TrialCancel(self.stop)
        with self._lock:
            self._live[index] = _Live(self.objective.metric, cancel, prunable)
            self._curves.pop(index, None)
            self._losses.pop(index, None)
        return cancel

    def sink(self, index: int) -> OutputCallback:
        """The output callback of trial `index`'s (first) job."""
        def on_output(stream: str, chunk: bytes) -> None:
            if stream == "stdout":
                self._feed(index, chunk)
        return on_output

    def pruned(self, index: int) -> str:
        """Why trial `index` was pruned ("" if it was not)."""
        with self._lock:
            live = self._live.get(index)
            return live.pruned if live is not None else ""

    def finish(self, index: int, status: TrialStatus | None) -> None:
        """Store the trial's final curve; a kept or discarded one becomes a reference."""
        with self._lock:
            live = self._live.pop(index, None)
            if status in (TrialStatus.KEEP, TrialStatus.DISCARD):
                self._completed.add(index)
            points = live.curve.shown() if live is not None else []
            if points:
                self._curves[index], self._losses[index] = points, self._loss(points)
        if live is not None and points:
            curves.save(self.store, self.run_id, index, points)
            self.store.append_event(self.run_id, EventKind.TRIAL_PROGRESS, {
                "trial": index, "step": points[-1][0], "value": points[-1][1],
                "points": len(points), "pruned": live.pruned,
                "curve_json": json.dumps([list(p) for p in points])})

    def curves(self) -> dict[int, list[Point]]:
        """Every curve known now (finished and live), in the metric's units."""
        with self._lock:
            return {**self._curves, **{i: lv.curve.shown() for i, lv in self._live.items()}}

    def _feed(self, index: int, chunk: bytes) -> None:
        with self._lock:
            live = self._live.get(index)
            if live is None or live.pruned:
                return
            fresh = [p for p in live.reader.feed(chunk) if live.curve.add(p)]
            if not fresh:
                return
            live.dirty = True
            now = time.monotonic()
            if live.prunable and self.pruner is not None \
                    and now - live.decided_at >= DECIDE_SECONDS:
                live.decided_at = now
                live.pruned = self._decide(index, live)
            save = live.pruned or now - live.saved_at >= SAVE_SECONDS
            if save:
                live.saved_at, live.dirty = now, False
                points, last = live.curve.shown(), fresh[-1]
        if not save:
            return
        if live.pruned:
            log.info("trial pruned", trial=index, reason=live.pruned)
            live.cancel.set()
        curves.save(self.store, self.run_id, index, points)
        self.store.append_event(self.run_id, EventKind.TRIAL_PROGRESS, {
            "trial": index, "step": last[0], "value": last[1], "points": len(points),
            "pruned": live.pruned})

    def _decide(self, index: int, live: _Live) -> str:
        assert self.pruner is not None
        others = {**self._losses, **{i: self._loss(lv.curve.shown())
                                     for i, lv in self._live.items() if i != index}}
        others.pop(index, None)
        completed = {i: c for i, c in others.items() if i in self._completed}
        return self.pruner.decide(index, self._loss(live.curve.shown()), completed, others)

    def _loss(self, points: list[Point]) -> list[Point]:
        return [(s, None if v is None else self.objective.loss(v)) for s, v in points]
