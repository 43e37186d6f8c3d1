"""Gates a mechanism passes before it may touch a run, cheapest first.

1. `static_check`: parses; one class defining hooks (one that can act); imports only
   from an allowed list; no dynamic-execution names or dunder/private-attribute tricks;
   none of numpy's ways to files, raw memory or C (DENIED_ATTRIBUTES). A best-effort
   filter only - the sandbox is the boundary (see mechanisms/interface.py).
2. `contract_check`: in the sandbox, every hook it defines answers well-formed within
   its limit on synthetic states, save/load round-trips, and two fresh sessions given
   the same calls answer identically (deterministic for a seed).
3. activation (`gate_and_activate`).

Each gate returns a `GateVerdict` with the reason and, where there is one, the
traceback, so a Level-2 proposer can be told exactly why its mechanism was refused.
"""

from __future__ import annotations

import ast
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from controller.research.level1.space import SearchSpace
from controller.research.level2.contract import exercise
from controller.research.level2.records import Failure
from controller.research.level2.runtime import MechanismSet, MechanismSettings
from controller.sandbox.backend import SandboxBackend
from mechanisms.interface import ACTING_HOOKS, HOOKS
from trainer import pysource

ALLOWED_IMPORTS = ("__future__", "math", "random", "statistics", "itertools", "collections",
                   "functools", "heapq", "bisect", "dataclasses", "typing", "json", "re",
                   "numpy", "mechanisms.sdk")
BANNED_NAMES = frozenset({
    "eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars",
    "getattr", "setattr", "delattr", "breakpoint", "input", "memoryview", "exit", "quit",
    "help", "__builtins__", "__loader__", "__spec__"})
SELF_NAMES = frozenset({"self", "cls"})
# numpy (and typing) names that reach files, raw memory, C or eval: refused
# as attributes of anything but self/cls, as imported names and as submodules. A
# best-effort list: the sandbox, not this gate, is what contains a mechanism.
DENIED_ATTRIBUTES = frozenset({
    "ctypeslib", "ctypes", "cffi", "fromfile", "tofile", "memmap", "open_memmap", "load",
    "save", "savez", "savez_compressed", "loadtxt", "savetxt", "genfromtxt", "fromregex",
    "dump", "lib", "core", "f2py", "distutils", "testing", "DataSource", "get_type_hints",
    "ForwardRef", "evaluate_forward_ref", "make_dataclass"})
DENIED_MODULES = ("numpy.ctypeslib", "numpy.lib", "numpy.core", "numpy._core", "numpy.f2py",
                  "numpy.distutils", "numpy.testing", "ctypes")
# Special methods a mechanism may define; others (e.g. __array_interface__, which hands
# numpy a raw address) are refused.
ALLOWED_DUNDER_METHODS = frozenset({
    "__init__", "__post_init__", "__repr__", "__str__", "__eq__", "__ne__", "__lt__",
    "__le__", "__gt__", "__ge__", "__hash__", "__len__", "__iter__", "__next__",
    "__contains__", "__getitem__", "__bool__"})


@dataclass(frozen=True)
class GateSettings:
    allowed_imports: tuple[str, ...] = ALLOWED_IMPORTS
    max_source_bytes: int = 64 << 10
    contract_states: int = 3
    contract_seed: int = 1234


@dataclass(frozen=True)
class GateVerdict:
    gate: str  # "static" | "contract" | "activation"
    passed: bool
    reason: str
    traceback: str = ""
    failure: Failure | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Admission:
    name: str
    verdicts: tuple[GateVerdict, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts)

    @property
    def stopped_at(self) -> str | None:
        return next((v.gate for v in self.verdicts if not v.passed), None)


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in packages)


def _import_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return _under(module, allowed) and not _under(module, DENIED_MODULES) and not any(
        part in DENIED_ATTRIBUTES for part in module.split(".")[1:])


def _problems(tree: ast.Module, settings: GateSettings) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import of {a.name!r} is not allowed" for a in node.names
                      if not _import_allowed(a.name, settings.allowed_imports)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or not (_import_allowed(module, settings.allowed_imports) or all(
                    _import_allowed(f"{module}.{a.name}", settings.allowed_imports)
                    for a in node.names)):
                found.append(f"{where}: import from {'.' * node.level + module!r} is not allowed")
            found += [f"{where}: import of {a.name!r} from {module!r} is not allowed"
                      for a in node.names if a.name in DENIED_ATTRIBUTES or a.name == "*"]
        elif isinstance(node, ast.Name) and (node.id in BANNED_NAMES or _dunder(node.id)):
            found.append(f"{where}: use of {node.id!r} is not allowed")
        elif isinstance(node, ast.Attribute) and node.attr != "__init__" and (
                _dunder(node.attr) or (node.attr.startswith("_") and not (
                    isinstance(node.value, ast.Name) and node.value.id in SELF_NAMES))):
            found.append(f"{where}: access to attribute {node.attr!r} is not allowed "
                         "(private attributes only on self)")
        elif isinstance(node, ast.Global | ast.Nonlocal):
            found.append(f"{where}: global/nonlocal state is not allowed")
        found += _more_problems(node, where)
    return found


def _more_problems(node: ast.AST, where: str) -> list[str]:
    """The numpy escape hatches and the cheap ways of reaching them by a computed name."""
    if isinstance(node, ast.Attribute) and node.attr in DENIED_ATTRIBUTES and not (
            isinstance(node.value, ast.Name) and node.value.id in SELF_NAMES):
        return [f"{where}: access to {node.attr!r} is not allowed (files, raw memory or C)"]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _dunder(node.name) \
            and node.name not in ALLOWED_DUNDER_METHODS:
        return [f"{where}: defining {node.name!r} is not allowed"]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _dunder(node.value):
        return [f"{where}: the string {node.value!r} is not allowed (a name by string)"]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "type" and len(node.args) > 1:
        return [f"{where}: creating a class with type() is not allowed"]
    return []


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def static_check(source: str, settings: GateSettings | None = None) -> GateVerdict:
    """Gate 1: parse and inspect the source without running any of it."""
    settings = settings or GateSettings()
    started = time.monotonic()

    def verdict(passed: bool, reason: str, tb: str = "") -> GateVerdict:
        return GateVerdict("static", passed, reason, tb, seconds=time.monotonic() - started)

    if len(source.encode()) > settings.max_source_bytes:
        return verdict(False, f"source exceeds {settings.max_source_bytes} bytes")
    try:
        tree = pysource.parse(source, filename="mechanism.py")
    except SyntaxError as exc:
        return verdict(False, f"not valid Python: {exc.msg} (line {exc.lineno})",
                       "".join(traceback.format_exception_only(exc)))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    with_hooks = {c.name: {f.name for f in c.body if isinstance(f, ast.FunctionDef)
                           and f.name in HOOKS} for c in classes}
    mechanisms = {name: hooks for name, hooks in with_hooks.items() if hooks}
    if len(mechanisms) != 1:
        return verdict(False, f"must define exactly one class with hooks {HOOKS}, found "
                              f"{sorted(mechanisms) or 'none'}")
    [(name, hooks)] = mechanisms.items()
    if not hooks & set(ACTING_HOOKS):
        return verdict(False, f"{name} defines none of {ACTING_HOOKS}, so it could never "
                              "change anything")
    problems = _problems(tree, settings)
    if problems:
        return verdict(False, "; ".join(problems[:10]))
    return verdict(True, f"{name} defines {', '.join(sorted(hooks))}")


def contract_check(executor: SandboxBackend, space: SearchSpace, name: str, source: str,
                   settings: GateSettings | None = None,
                   mechanism_settings: MechanismSettings | None = None) -> GateVerdict:
    """Gate 2: exercise every hook in two fresh sandboxed sessions; both must pass and
    answer identically."""
    settings = settings or GateSettings()
    started = time.monotonic()
    transcripts: list[list[Any]] = []
    for _ in range(2):
        with MechanismSet(executor, space, mechanism_settings) as mechanisms:
            transcript, failure = exercise(mechanisms, name, source, settings.contract_seed,
                                           settings.contract_states)
        if failure is not None:
            return GateVerdict("contract", False, f"{failure.hook}: {failure.reason.value}: "
                               f"{failure.message}", failure.traceback_text(), failure,
                               time.monotonic() - started)
        transcripts.append(transcript)
    first, second = transcripts
    for a, b in zip(first, second, strict=True):
        if a != b:
            return GateVerdict("contract", False, f"not deterministic for a seed: {a!r} "
                               f"then {b!r}", seconds=time.monotonic() - started)
    return GateVerdict("contract", True, f"{len(first)} calls answered well-formed and "
                       "deterministically", seconds=time.monotonic() - started)


def gate_and_activate(mechanisms: MechanismSet, name: str, source: str,
                      settings: GateSettings | None = None,
                      saved_state: Any = None) -> Admission:
    """Run the gates in order and activate `source` in `mechanisms` if all pass."""
    verdicts = [static_check(source, settings)]
    if verdicts[-1].passed:
        verdicts.append(contract_check(mechanisms.executor, mechanisms.space, name, source,
                                       settings, mechanisms.settings))
    if verdicts[-1].passed:
        record = mechanisms.activate(name, source, saved_state)
        failure = record.failure
        verdicts.append(GateVerdict(
            "activation", failure is None, record.detail,
            failure.traceback_text() if failure else "", failure, record.seconds))
    return Admission(name, tuple(verdicts))
