"""The controller's `ast.parse` serialisation (CPython < 3.11.9): threads parse safely,
and a garbage collection whose finalisers parse (asyncio logging a lost exception while
pytest or the validator parses) neither deadlocks nor breaks the outer parse."""

from __future__ import annotations

import ast
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import controller  # noqa: F401  (installs the fix)

_DEEP = "x = " + "(" * 90 + "1" + ")" * 90
_BIG = "\n".join(f"def f{i}(a, b):\n    return [a + b * {i} for _ in range(3)]" for i in range(400))


def _finishes(target: Callable[[], None], timeout: float = 30.0) -> bool:
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


@contextmanager
def _collect_after(allocations: int) -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(gc.get_count()[0] + allocations, 1, 1)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class _ParsesWhenCollected:
    parsed = 0

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        ast.parse(_DEEP)
        _ParsesWhenCollected.parsed += 1


def test_finalisers_that_parse_during_a_parse_neither_deadlock_nor_fail_it() -> None:
    errors: list[BaseException] = []

    def parse_at_depth(depth: int) -> None:
        if depth:
            return parse_at_depth(depth - 1)
        gc.disable()  # garbage waits, so the parse's first allocation collects it
        for _ in range(50):
            _ParsesWhenCollected()
        with _collect_after(30):  # a few allocations into the parse
            gc.enable()
            ast.parse(_BIG)

    def parse_with_garbage_around() -> None:
        try:
            for depth in range(0, 60, 3):
                parse_at_depth(depth)
        except BaseException as err:  # SystemError: recursion depth mismatch
            errors.append(err)

    assert _finishes(parse_with_garbage_around), "a parse deadlocked"
    gc.collect()
    assert not errors
    assert _ParsesWhenCollected.parsed > 0


def test_threads_parsing_deep_sources_at_once_all_succeed() -> None:
    errors: list[BaseException] = []

    def parse_many() -> None:
        try:
            for _ in range(200):
                ast.parse(_DEEP)
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=parse_many) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
