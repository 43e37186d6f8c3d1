"""The progress line protocol: what a candidate may report while it trains.

A line of the job's stdout that starts with `bilevel-progress ` carries one JSON object
with an integer `step` and the task's metric, e.g.

    bilevel-progress {"step": 100, "val_loss": 1.23}

Every byte of it is hostile, so the parser holds nothing unbounded: a line longer than
MAX_LINE_BYTES is skipped whole (the rest of it is dropped as it arrives), the JSON is
parsed with size, depth and width caps (bounded_json), a step must be a non-negative
integer that grows, and a value must be a number (NaN or Infinity count as "diverged":
null). A curve keeps at most MAX_POINTS points: when full it drops every other one and
keeps only steps a doubled stride apart, so it spans the whole run at a coarser grain.
The points are claims, never the result: the trusted scorer alone decides the metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from controller.sandbox import bounded_json

PREFIX = b"bilevel-progress "
MAX_LINE_BYTES = 512
MAX_POINTS = 128  # per trial, stored and streamed
MAX_STEP = 1 << 53
MAX_ABS_VALUE = 1e12
CAPS = bounded_json.Caps(max_bytes=MAX_LINE_BYTES, max_depth=2, max_str=64, max_items=16,
                         nonfinite_null=True)

Point = tuple[int, float | None]  # (step, value); None: the candidate reported NaN/inf
# The common form, json.dumps({"step": s, metric: v}), read without a JSON parser.
_PLAIN = re.compile(rb'\{"step": ?(\d{1,16}), ?"([A-Za-z0-9_.-]{1,64})": ?'
                    rb'(-?[0-9][0-9.eE+-]{0,30}|NaN|-?Infinity)\}')


class LineReader:
    """Splits a byte stream into bounded lines and yields the progress points in them.
    Lines without the prefix cost one `startswith`; an overlong line is skipped."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._partial = b""
        self._skipping = False  # inside a line already over MAX_LINE_BYTES

    def feed(self, chunk: bytes) -> Iterator[Point]:
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            last = i == len(lines) - 1
            if self._skipping:
                if not last:
                    self._skipping = False  # the overlong line ends here
                continue
            line = self._partial + piece if self._partial else piece
            self._partial = b""
            if len(line) > MAX_LINE_BYTES:
                self._skipping = last  # an unfinished overlong line: drop what follows
                continue
            if last:
                self._partial = line  # wait for the rest of the line
                continue
            point = parse_line(line, self.metric)
            if point is not None:
                yield point


def parse_line(line: bytes, metric: str) -> Point | None:
    """The (step, value) a progress line claims, or None if it is not a valid one."""
    line = line.rstrip(b"\r")
    if not line.startswith(PREFIX) or len(line) > MAX_LINE_BYTES:
        return None
    plain = _PLAIN.fullmatch(line, len(PREFIX))
    if plain is not None:
        return _plain(plain, metric)
    try:
        value = bounded_json.loads(line[len(PREFIX):], CAPS, "a progress line")
    except bounded_json.JSONLimitError:
        return None
    if not isinstance(value, dict) or metric not in value:
        return None
    step, reported = value.get("step"), value[metric]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return None
    if reported is None:
        return step, None  # NaN or Infinity: the candidate says it diverged
    if isinstance(reported, bool) or not isinstance(reported, int | float):
        return None
    number = float(reported)
    return (step, number) if abs(number) <= MAX_ABS_VALUE else (step, None)


def _plain(match: re.Match[bytes], metric: str) -> Point | None:
    if match[2].decode() != metric:
        return None
    step = int(match[1])
    try:
        number = float(match[3])
    except ValueError:
        return None
    if step > MAX_STEP:
        return None
    return (step, number) if math.isfinite(number) and abs(number) <= MAX_ABS_VALUE \
        else (step, None)


@dataclass
class Curve:
    """One trial's points by growing step, at most MAX_POINTS of them, plus the last
    point it reported (kept even when thinning dropped it)."""

    points: list[Point] = field(default_factory=list)
    stride: int = 1
    last: Point | None = None

    def add(self, point: Point) -> bool:
        """Take a point; False when its step does not grow (ignored)."""
        if self.last is not None and point[0] <= self.last[0]:
            return False
        self.last = point
        if not self.points or point[0] >= self.points[-1][0] + self.stride:
            self.points.append(point)
            if len(self.points) >= MAX_POINTS:
                self.points = self.points[::2]
                self.stride *= 2
        return True

    def shown(self) -> list[Point]:
        """The stored points and the last one reported."""
        if self.last is not None and (not self.points or self.points[-1] != self.last):
            return [*self.points, self.last]
        return list(self.points)


def summary(points: list[Point], count: int = 4) -> list[Point]:
    """At most `count` points spread over the curve, the last included (for a prompt)."""
    if len(points) <= count:
        return list(points)
    picks = {round(i * (len(points) - 1) / (count - 1)) for i in range(count)}
    return [points[i] for i in sorted(picks)]
