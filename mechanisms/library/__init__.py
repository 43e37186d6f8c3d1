"""The built-in mechanisms, by name. Each is one module with one class, loaded into the
sandboxed host exactly like a generated mechanism (same interface, same gates)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

LIBRARY: dict[str, str] = {
    "noop": "noop.py",
    "tabu": "tabu.py",
    "step_bandit": "bandit.py",
    "latin_hypercube": "latin_hypercube.py",
    "plateau_restart": "plateau.py",
    "crash_memory": "crash_memory.py",
    "elite_crossover": "elite_crossover.py",
    "cma_advisor": "cma_advisor.py",
    "direct_search": "direct_search.py",
}


def names() -> tuple[str, ...]:
    return tuple(LIBRARY)


def source(name: str) -> str:
    """The module source of a built-in mechanism, as the host will load it."""
    if name not in LIBRARY:
        raise KeyError(f"no built-in mechanism {name!r}; known: {', '.join(LIBRARY)}")
    return (_HERE / LIBRARY[name]).read_text(encoding="utf-8")
