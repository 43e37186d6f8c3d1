"""trainer.pysource.parse is ast.parse, safe from several threads at once: the same tree,
the same SyntaxError, and parallel parses (as the controller's runs validate proposals in
parallel) that all succeed. ruff's banned-api rule keeps every other call site on it."""

from __future__ import annotations

import ast
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
