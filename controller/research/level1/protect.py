"""What an LLM's code edit of train.py must leave alone: a fast static first filter.

This is only a filter. It rejects the obvious ways to change the experiment before a
container is spent on them, and it gives the LLM a reason it can act on; it cannot
prove anything about Python code. The guarantees live outside the candidate's process:
the trusted side measures and bounds the training phase's wall and CPU time against an
allowance measured on the host (research/tasks/trainer_run.py: over budget means status
`over_budget`, never kept), sets the trial's seed (harness.seed) and flags a candidate
whose runs at a fixed step count on two seeds are bit-identical
(research/level1/evaluation.py), and val_bpb comes only from the separate trusted
evaluator.

The trusted harness itself lives in the read-only `trainer` package of the image; what
train.py holds of it are the lines that call it. A task declares them precisely:

- `calls`: dotted calls (e.g. `harness.save_model`) whose every occurrence, arguments
  included, must survive unchanged and in the same number: the data loader, the
  training clock, the seed, the model export and the summary;
- the names those calls go through (`harness`) may not be rebound or shadowed, and may
  only be used to call (`harness.f(...)`): no aliasing, no `harness.X.attr = ...`;
- names bound to a protected call's result (`clock = harness.TrainingClock(...)`) keep
  their single binding and get no attribute or item assignments (`clock.budget_seconds`);
- `imports`: import statements that must stay (e.g. `from trainer import harness`);
- `functions`: top-level functions that must stay byte-for-byte in meaning (AST-equal);
- `knobs`: constants that define the experiment (time budget, seed) keep their value
  and their single binding (no `TIME_BUDGET_SECONDS = float(...)` later on).

A binding is any form that binds a name (_bound_names): assignment, walrus, for, with,
except and match targets (`case clock:`), parameters, defs, import aliases, `del`, and
`global`/`nonlocal` declarations.

For every task, an edit may not add or change a reference to a seeding function or RNG
constructor, however reached (`torch.manual_seed(1234)`, `from torch import manual_seed
as r`, `r = random.seed`, `random.Random(7)`, `np.random.default_rng`, a `seed=` or
`generator=` keyword), reflection or dynamic code (`setattr`, `globals()`, `exec`,
`eval`, `compile`, `__import__`, `__dict__`, ...), a star import, nor an import the
baseline lacks from a module that reaches around the checks (`importlib`, `sys`,
`builtins`, `inspect`, `ctypes`, ...; from `trainer`, any (module, name, alias) beyond
the baseline's own, so `from trainer import archive` is refused).
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from controller.research.level1.space import ProposalError
from trainer import knobs as knob_io
from trainer import pysource


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _bound_names(tree: ast.Module) -> Counter[str]:
    """Every name the module binds or declares, anywhere and in every binding form:
    assignment, walrus and for/with/comprehension targets, `del`, defs and classes,
    parameters, import aliases, `except ... as`, match captures (`case x`, `*rest`,
    `**rest`) and `global`/`nonlocal` declarations."""
    names: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names[node.id] += 1
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] += 1
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] += 1
        elif isinstance(node, ast.arg):
            names[node.arg] += 1
        elif isinstance(node, ast.MatchAs | ast.MatchStar | ast.ExceptHandler) and node.name:
            names[node.name] += 1
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names[node.rest] += 1
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
    return names


# Names whose use reaches around a static check: reflection and dynamic code.
FORBIDDEN_NAMES = frozenset({
    "setattr", "delattr", "getattr", "globals", "locals", "vars", "exec", "eval", "compile",
    "__import__", "__builtins__", "breakpoint", "memoryview"})
FORBIDDEN_ATTRS = frozenset({
    "__dict__", "__class__", "__globals__", "__builtins__", "__code__", "__closure__",
    "__subclasses__", "__bases__", "__mro__", "__getattribute__", "__setattr__",
    "__delattr__", "__import__", "__loader__", "__spec__", "__self__", "__func__",
    "__defaults__", "__kwdefaults__", "__wrapped__", "__module__", "f_globals", "f_locals",
    "f_back", "gi_frame", "tb_frame"})
FORBIDDEN_MODULES = frozenset({
    "importlib", "sys", "builtins", "inspect", "ctypes", "gc", "types", "runpy", "pkgutil",
    "code", "codeop", "marshal", "pickle", "dill", "cffi", "trainer"})
# Names that set or make a random state: seeding functions and RNG constructors (torch,
# random, numpy). The trial's seed comes from the controller.
SEEDING_NAMES = frozenset({
    "manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state", "set_state",
    "setstate", "fork_rng", "default_rng", "RandomState", "Generator", "Random",
    "SeedSequence", "BitGenerator", "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"})
# Keyword arguments that hand a function a seed or a generator of its own.
SEEDING_KEYWORDS = frozenset({"seed", "random_state", "generator"})


def _root(node: ast.expr) -> str:
    """The name an attribute/subscript chain starts from (`clock` of `clock.a[0].b`)."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _seeding_name(node: ast.AST) -> bool:
    """`x.manual_seed` anywhere, or a seeding name read (not one being bound)."""
    if isinstance(node, ast.Attribute):
        return node.attr in SEEDING_NAMES
    return isinstance(node, ast.Name) and node.id in SEEDING_NAMES \
        and isinstance(node.ctx, ast.Load)


def _seeding_refs(tree: ast.Module) -> Counter[str]:
    """Every reference to a seeding name, called or not (`r = torch.manual_seed` counts),
    imported under any alias (`from torch import manual_seed as r`), and every call that
    passes a seed or generator by keyword; a call is counted with its arguments."""
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    refs: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            refs.update(f"from {node.module or '.'} import {a.name}" for a in node.names
                        if a.name in SEEDING_NAMES)
        elif _seeding_name(node):
            call = parents.get(id(node))
            refs[ast.unparse(call if isinstance(call, ast.Call) and call.func is node
                             else node)] += 1
        elif isinstance(node, ast.Call) and any(k.arg in SEEDING_KEYWORDS
                                                for k in node.keywords):
            refs[ast.unparse(node)] += 1
    return refs


def _imports(tree: ast.Module) -> Counter[tuple[str, str, str]]:
    """(module, imported name, alias) of every import: ("trainer", "harness", "") for
    `from trainer import harness`, ("sys", "", "") for `import sys`."""
    out: Counter[tuple[str, str, str]] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((a.name, "", a.asname or "") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out.update((module, a.name, a.asname or "") for a in node.names)
    return out


def _store_targets(tree: ast.Module) -> list[ast.expr]:
    """Every attribute or item an assignment, augmented assignment or del writes."""
    targets: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Subscript) and isinstance(
                node.ctx, ast.Store | ast.Del):
            targets.append(node)
    return targets


def check_dynamic(base: str, candidate: str) -> None:
    """The rules for every task: no reflection, no new seeding, no reaching imports.
    Only what the candidate adds counts: a baseline may use what it likes."""
    old, new = pysource.parse(base), pysource.parse(candidate)
    old_names = {n.id for n in ast.walk(old) if isinstance(n, ast.Name)}
    old_attrs = {n.attr for n in ast.walk(old) if isinstance(n, ast.Attribute)}
    for node in ast.walk(new):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES \
                and node.id not in old_names:
            raise ProposalError("protected", f"the edit uses `{node.id}`; reflection and "
                                "dynamic code are not allowed in train.py")
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS \
                and node.attr not in old_attrs:
            raise ProposalError("protected", f"the edit uses `.{node.attr}`; reflection is "
                                "not allowed in train.py")
    for module, name, alias in sorted((_imports(new) - _imports(old)).elements()):
        text = f"from {module} import {name}" if name else f"import {module}"
        text += f" as {alias}" if alias else ""
        if name == "*":
            raise ProposalError("protected", f"the edit adds `{text}`, which binds names the "
                                "checks cannot see; import the names you use")
        if module.split(".")[0] in FORBIDDEN_MODULES or module.startswith("."):
            raise ProposalError("protected", f"the edit adds `{text}`; train.py may not "
                                "import modules that reach around the harness (from the "
                                "trainer package it keeps exactly the baseline's imports)")
    before, after = _seeding_refs(old), _seeding_refs(new)
    if before != after:
        changed = sorted((after - before).elements()) or sorted((before - after).elements())
        raise ProposalError("protected", f"the edit adds, removes or changes the seeding "
                            f"`{changed[0]}`; the controller sets the trial's seed "
                            "(harness.seed), so leave the random state alone")


@dataclass(frozen=True)
class Protected:
    calls: frozenset[str] = frozenset()
    imports: tuple[str, ...] = ()
    functions: frozenset[str] = frozenset()
    knobs: frozenset[str] = frozenset()

    def describe(self) -> str:
        """For the prompt: what an edit must not touch."""
        parts = []
        if self.calls:
            parts.append("calls to " + ", ".join(sorted(self.calls)) + " (keep each exactly, "
                         "with its arguments)")
        if self.imports:
            parts.append("the imports " + "; ".join(self.imports))
        if self.functions:
            parts.append("the functions " + ", ".join(sorted(self.functions)))
        if self.knobs:
            parts.append("the values of " + ", ".join(sorted(self.knobs)))
        return "; ".join(parts) or "nothing"

    def check(self, base: str, candidate: str) -> None:
        """Raise ProposalError("protected", why) if `candidate` touches a protected part."""
        old, new = pysource.parse(base), pysource.parse(candidate)
        self._check_calls(old, new)
        for statement in self.imports:
            wanted = ast.dump(pysource.parse(statement).body[0])
            if wanted not in {ast.dump(s) for s in new.body}:
                raise ProposalError("protected", f"the edit removes or changes `{statement}`;"
                                    " it must stay as a top-level statement")
        check_dynamic(base, candidate)
        self._check_bindings(old, new)
        for name in sorted(self.functions):
            before, after = _function(old, name), _function(new, name)
            if before is not None and (after is None or ast.dump(before) != ast.dump(after)):
                raise ProposalError("protected", f"the edit changes the protected function "
                                    f"{name}(); leave it exactly as it is")
        old_knobs, new_knobs = knob_io.read_knobs(base), knob_io.read_knobs(candidate)
        for name in sorted(self.knobs):
            if name in old_knobs and new_knobs.get(name) != old_knobs[name]:
                raise ProposalError("protected", f"{name} defines the experiment and must stay "
                                    f"{old_knobs[name]!r}")

    def _check_calls(self, old: ast.Module, new: ast.Module) -> None:
        def calls(tree: ast.Module) -> Counter[str]:
            return Counter(ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
                           and _dotted(n.func) in self.calls)

        before, after = calls(old), calls(new)
        if before != after:
            missing = sorted((before - after).elements())
            extra = sorted((after - before).elements())
            what = (f"removes or changes {missing[0]}" if missing
                    else f"adds another protected call {extra[0]}")
            raise ProposalError("protected", f"the edit {what}; the trusted harness calls "
                                "must stay exactly as they are")
        roots = {c.split(".")[0] for c in self.calls}
        old_bound, new_bound = _bound_names(old), _bound_names(new)
        for root in sorted(roots):
            if new_bound[root] != old_bound[root]:
                raise ProposalError("protected", f"the edit rebinds `{root}`, the trusted "
                                    "harness module; use another name")

    def _check_bindings(self, old: ast.Module, new: ast.Module) -> None:
        """The harness module is only called through; results of protected calls and
        protected knobs keep their one binding and get no attribute or item writes."""
        roots = {c.split(".")[0] for c in self.calls}
        parents = {id(child): node for node in ast.walk(new)
                   for child in ast.iter_child_nodes(node)}
        for node in ast.walk(new):
            if not (isinstance(node, ast.Name) and node.id in roots):
                continue
            attr = parents.get(id(node))
            call = parents.get(id(attr)) if isinstance(attr, ast.Attribute) else None
            if not (isinstance(call, ast.Call) and call.func is attr) \
                    and not isinstance(node.ctx, ast.Store):
                raise ProposalError("protected", f"the edit uses `{node.id}` other than to "
                                    f"call it (`{node.id}.f(...)`): `{ast.unparse(attr or node)}`"
                                    "; the trusted harness may only be called")
        guarded = _result_names(old, self.calls) | roots
        for target in _store_targets(new):
            if _root(target) in guarded:
                raise ProposalError("protected", f"the edit assigns `{ast.unparse(target)}`; "
                                    f"`{_root(target)}` belongs to the trusted harness")
        old_bound, new_bound = _bound_names(old), _bound_names(new)
        for name in sorted(_result_names(old, self.calls) | set(self.knobs)):
            if old_bound[name] and new_bound[name] != old_bound[name]:
                raise ProposalError("protected", f"the edit binds `{name}` again (or no "
                                    "longer); it defines the experiment, leave its one "
                                    "assignment as it is")


def _result_names(tree: ast.Module, calls: frozenset[str]) -> set[str]:
    """Names bound to a protected call's result, e.g. `clock` of `clock = harness.X(...)`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and _dotted(node.value.func) in calls:
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name),
                None)


TRAINER = Protected(
    calls=frozenset({"harness.train_data", "harness.TrainingClock", "harness.save_model",
                     "harness.finish", "harness.seed", "harness.device_batches"}),
    imports=("from trainer import harness",),
    knobs=frozenset({"TIME_BUDGET_SECONDS", "WARMUP_STEPS", "MAX_STEPS", "SEED"}))

SURROGATE = Protected(functions=frozenset({"main", "response", "log_penalty"}),
                      knobs=frozenset({"NOISE_STD", "MEMORY_LIMIT_GB"}))
