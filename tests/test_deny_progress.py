"""Hostile progress output against the controller's side of the protocol: a huge line,
deep nesting, NaN, millions of lines, fed to the loop's ProgressWatch with the store in
a real SQLite file. Each cap has a twin that switches it off (monkeypatch, here only)
and shows the harm it prevents."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from controller.research.level1 import progress
from controller.research.level1.pruners import MedianPruner, PrunerSettings
from controller.research.level1.watch import ProgressWatch
from controller.research.task import Objective
from controller.sandbox import bounded_json
from controller.store import curves
from controller.store.records import EventKind, TrialStatus
from controller.store.runs import RunStore

RUN = "run-hostile"


def _watch(tmp_path: Path) -> tuple[RunStore, ProgressWatch]:
    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run(RUN, {})
    return store, ProgressWatch(RUN, store, Objective("val_loss"), None, threading.Event())


def _flood(lines: int) -> bytes:
    return b"".join(b'bilevel-progress {"step": %d, "val_loss": 1.5}\n' % s
                    for s in range(1, lines + 1))


def _feed(watch: ProgressWatch, index: int, data: bytes, chunk: int = 64 << 10) -> float:
    sink = watch.sink(index)
    start = time.monotonic()
    for i in range(0, len(data), chunk):
        sink("stdout", data[i:i + chunk])
    return time.monotonic() - start


def test_deny_millions_of_progress_lines_keep_a_bounded_curve(tmp_path: Path) -> None:
    store, watch = _watch(tmp_path)
    watch.begin(1)
    seconds = _feed(watch, 1, _flood(2_000_000))
    watch.finish(1, TrialStatus.DISCARD)
    stored = curves.load(store, RUN)[1]
    assert len(stored) <= progress.MAX_POINTS + 1
    assert stored[-1] == (2_000_000, 1.5)  # the whole run, at a coarser grain
    assert seconds < 60
    events = [e for e in store.events_after(RUN, 0, 100_000)
              if e.kind is EventKind.TRIAL_PROGRESS]
    assert len(events) <= seconds / 1.0 + 3  # about one a second, and the final one


def test_deny_twin_without_the_point_cap_the_curve_grows_with_the_flood(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "MAX_POINTS", 10**9)
    store, watch = _watch(tmp_path)
    watch.begin(1)
    _feed(watch, 1, _flood(200_000))
    watch.finish(1, TrialStatus.DISCARD)
    assert len(curves.load(store, RUN)[1]) == 200_000


def _padded(pad: int) -> bytes:
    return b'bilevel-progress {"step": 7, "val_loss": 0.5' + b" " * pad + b"}\n"


def test_deny_a_huge_line_is_skipped_whole(tmp_path: Path) -> None:
    store, watch = _watch(tmp_path)
    watch.begin(1)
    _feed(watch, 1, _padded(50 << 20) + _padded(0).replace(b"7", b"8"))
    watch.finish(1, TrialStatus.DISCARD)
    assert curves.load(store, RUN)[1] == [(8, 0.5)]  # the line after it still counts


def test_deny_twin_without_the_line_cap_the_huge_line_is_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "MAX_LINE_BYTES", 1 << 30)
    monkeypatch.setattr(progress, "CAPS", bounded_json.Caps(
        max_bytes=1 << 30, max_depth=2, max_items=16, nonfinite_null=True))
    store, watch = _watch(tmp_path)
    watch.begin(1)
    _feed(watch, 1, _padded(4 << 20))
    watch.finish(1, TrialStatus.DISCARD)
    assert curves.load(store, RUN)[1] == [(7, 0.5)]


def _nested(depth: int) -> bytes:
    return (b'bilevel-progress {"step": 3, "val_loss": 0.5, "x": ' + b"[" * depth
            + b"]" * depth + b"}\n")


def test_deny_deep_nesting_and_nan_do_not_reach_the_store_as_numbers(tmp_path: Path) -> None:
    store, watch = _watch(tmp_path)
    watch.begin(1)
    _feed(watch, 1, _nested(100) + b'bilevel-progress {"step": 4, "val_loss": NaN}\n')
    watch.finish(1, TrialStatus.DISCARD)
    assert curves.load(store, RUN)[1] == [(4, None)]  # NaN is stored as "diverged"
    stored = store.query("SELECT points_json FROM trial_curves")[0]["points_json"]
    assert "NaN" not in stored and json.loads(stored) == [[4, None]]


def test_deny_twin_without_the_depth_cap_a_nested_line_is_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "CAPS", bounded_json.Caps(
        max_bytes=progress.MAX_LINE_BYTES, max_depth=1000, max_items=16,
        nonfinite_null=True))
    store, watch = _watch(tmp_path)
    watch.begin(1)
    _feed(watch, 1, _nested(100))
    watch.finish(1, TrialStatus.DISCARD)
    assert curves.load(store, RUN)[1] == [(3, 0.5)]


def test_deny_a_flood_cannot_stall_the_pruner(tmp_path: Path) -> None:
    """Every point would ask the pruner; it is asked at most a few times a second."""
    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run(RUN, {})
    calls = []

    class Counting(MedianPruner):
        def decide(self, *args: object, **kwargs: object) -> str:
            calls.append(1)
            return ""

    watch = ProgressWatch(RUN, store, Objective("val_loss"),
                          Counting(PrunerSettings("median")), threading.Event())
    watch.begin(1)
    seconds = _feed(watch, 1, _flood(500_000))
    assert len(calls) <= seconds / 0.25 + 2
