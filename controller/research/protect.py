"""What an LLM's code edit of train.py must leave alone.

The trusted harness itself lives in the read-only `trainer` package of the image; what
train.py holds of it are the lines that call it. A task declares them precisely:

- `calls`: dotted calls (e.g. `harness.save_model`) whose every occurrence, arguments
  included, must survive unchanged and in the same number: the data loader, the
  training clock, the model export and the summary;
- the names those calls go through (`harness`) may not be rebound or shadowed;
- `imports`: import statements that must stay (e.g. `from trainer import harness`);
- `functions`: top-level functions that must stay byte-for-byte in meaning (AST-equal);
- `knobs`: constants that define the experiment (time budget, seed) and keep their value.

val_bpb still comes only from the separate trusted evaluator, so this guards the
experiment's definition, not the metric.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from controller.research import knobs as knob_io
from controller.research.space import ProposalError


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _bound_names(tree: ast.Module) -> Counter[str]:
    """Every name the module binds, anywhere (assignments, defs, imports, loop targets)."""
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
    return names


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
        old, new = ast.parse(base), ast.parse(candidate)
        self._check_calls(old, new)
        for statement in self.imports:
            wanted = ast.dump(ast.parse(statement).body[0])
            if wanted not in {ast.dump(s) for s in new.body}:
                raise ProposalError("protected", f"the edit removes or changes `{statement}`;"
                                    " it must stay as a top-level statement")
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


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name),
                None)


TRAINER = Protected(
    calls=frozenset({"harness.train_data", "harness.TrainingClock", "harness.save_model",
                     "harness.finish"}),
    imports=("from trainer import harness",),
    knobs=frozenset({"TIME_BUDGET_SECONDS", "WARMUP_STEPS", "MAX_STEPS", "SEED"}))

SURROGATE = Protected(functions=frozenset({"main", "response", "log_penalty"}),
                      knobs=frozenset({"NOISE_STD", "MEMORY_LIMIT_GB"}))
