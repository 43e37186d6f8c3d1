"""trainer.pysource.parse is ast.parse, safe from several threads at once: the same tree,
the same SyntaxError, and parallel parses (as the controller's runs validate proposals in
parallel) that all succeed. ruff's banned-api rule keeps every other call site on it."""

from __future__ import annotations

import ast
import gc
import threading

import pytest

from trainer import pysource

SOURCE = "\n".join(f"def f{i}(x):\n    return [(a, {{b: c for b, c in x}}) for a in x]"
                   for i in range(200))


def test_parse_gives_the_tree_and_the_errors_of_ast_parse() -> None:
    assert ast.dump(pysource.parse(SOURCE)) == ast.dump(ast.parse(SOURCE))
    with pytest.raises(SyntaxError) as info:
        pysource.parse("def f(:\n", filename="mechanism.py")
    assert info.value.filename == "mechanism.py" and info.value.lineno == 1


def test_parses_from_many_threads_at_once_all_succeed() -> None:
    expected = ast.dump(ast.parse(SOURCE))
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(5):
            try:
                results.append(ast.dump(pysource.parse(SOURCE)))
            except BaseException as exc:  # any failure is the finding
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [expected] * 30


_DEEP = "x = " + "(" * 90 + "1" + ")" * 90


class _ParsesWhenCollected:
    """Garbage whose finaliser parses, as asyncio's lost-exception log does in 3.11."""

    parsed = 0

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        ast.parse(_DEEP)
        _ParsesWhenCollected.parsed += 1


def test_a_collection_whose_finalisers_parse_does_not_fail_or_block_a_parse() -> None:
    """With collection left on, a finaliser that parses mid-parse failed the outer parse
    ("AST constructor recursion depth mismatch"), or deadlocked a plain lock."""
    errors: list[BaseException] = []

    def parse_at_depth(depth: int) -> None:
        if depth:
            return parse_at_depth(depth - 1)
        gc.disable()  # the garbage waits ...
        for _ in range(50):
            _ParsesWhenCollected()
        threshold = gc.get_threshold()
        gc.set_threshold(gc.get_count()[0] + 30, 1, 1)  # ... until a few allocations in
        try:
            gc.enable()
            pysource.parse(SOURCE)
        finally:
            gc.set_threshold(*threshold)

    def work() -> None:
        try:
            for depth in range(0, 60, 3):
                parse_at_depth(depth)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a parse deadlocked"
    gc.collect()
    assert errors == [] and _ParsesWhenCollected.parsed > 0
