"""Where Level 2 gets its next mechanism: offline, the built-in library chosen by a
bandit over how each built-in fared in earlier runs; or the LLM in four steps - explore
-> critique and select -> specification -> code - whose prompts and outputs are all kept
with the mechanism's row.

The explore prompt shows the mechanism interface (the docs of mechanisms/interface.py,
wire.py and the sdk), the trace, and every earlier mechanism with its measured effect or
its failure and traceback. It names NO candidate fields unless `explore_domains` is set:
a list of fields steers the LLM towards the ideas of whoever wrote it, and the point is
to find ideas from anywhere; the LLM states the field its idea comes from, which is
recorded.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.llm.limits import max_tokens_for
from controller.llm.types import CallTag, ChatMessage, LLMRequest, Provider
from controller.research.level1.answers import read_object
from controller.research.level1.space import ProposalError
from controller.research.level2.gates import GateSettings, static_check
from controller.research.settings import OuterSettings
from controller.store.mechanisms import KEPT, MechanismRow, Outcome
from controller.store.records import TrialRecord
from mechanisms import interface, library, sdk, wire

CONTROLS = ("noop",)  # library entries that are controls for ablations, not search aids
SPEC_SHAPE = '{"name": ..., "field": ..., "hooks": [...], "description": ...}'
# Asked for as structured output (negotiated per endpoint like a proposal's), so a
# server with a grammar answers the specification as JSON even from a small model.
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "field": {"type": "string"},
                   "hooks": {"type": "array", "items": {"type": "string"}},
                   "description": {"type": "string"}},
    "required": ["name", "field", "hooks", "description"],
}
CODE_FENCE = re.compile(r"```(?:python)?\s*\n(.*?)```", re.DOTALL)


class DesignError(RuntimeError):
    """The LLM's answers did not give a usable specification."""


@dataclass
class Design:
    name: str
    field: str
    description: str
    source: str
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def choose_from_library(tried: set[str], outcomes: Sequence[Outcome], task: str,
                        seed: int, round_: int) -> tuple[str, str] | None:
    """(name, why) by Thompson sampling: each untried built-in draws from
    Beta(1 + kept, 1 + reverted or disabled), counted over earlier runs in this store on
    the same task (over every task when it has none there); the highest draw wins. With
    no history every built-in is equally likely, so no fixed order favours one; each
    built-in's draw is seeded by the run's seed, the round and its name, so a run is
    reproducible and adding a built-in leaves the others' draws as they were. The
    evidence is the verdicts of Level 2's randomised test, not the objective's formula,
    so it means the same for any objective. None when every built-in was tried."""
    left = [n for n in library.names() if n not in tried and n not in CONTROLS]
    if not left:
        return None
    counts: dict[str, tuple[int, int, str]] = {}
    draws: dict[str, float] = {}
    for name in left:
        mine = [o for o in outcomes if o.name == name and o.origin == "library"]
        here = [o for o in mine if o.task == task]
        pool, where = (here, f"on {task}") if here else (mine, "on any task")
        kept = sum(o.status == KEPT for o in pool)
        counts[name] = (kept, len(pool) - kept, where)
        draws[name] = random.Random(f"{seed}:{round_}:library:{name}").betavariate(
            1 + kept, 1 + len(pool) - kept)
    best = max(left, key=lambda n: draws[n])
    kept, lost, where = counts[best]
    return best, (f"bandit: Thompson draw {draws[best]:.2f} from Beta(1+{kept}, 1+{lost}) - "
                  f"kept in {kept} of {kept + lost} earlier runs {where}")


def interface_docs() -> str:
    """What the LLM reads about the inner loop's mechanism interface."""
    helpers = []
    for name, fn in inspect.getmembers(sdk, inspect.isfunction):
        if fn.__module__ == sdk.__name__ and not name.startswith("_"):
            doc = (inspect.getdoc(fn) or "").split("\n")[0]
            helpers.append(f"sdk.{name}{inspect.signature(fn)}  {doc}".rstrip())
    return "\n\n".join([interface.__doc__ or "", wire.__doc__ or "",
                        "Helpers (`from mechanisms import sdk`):\n" + "\n".join(helpers),
                        "Allowed imports: " + ", ".join(GateSettings().allowed_imports)])


def trace_text(trace: Sequence[TrialRecord], limit: int = 25) -> str:
    lines = []
    for t in trace[-limit:]:
        status = t.status.value if t.status else "?"
        val = f"{t.val_bpb:.6f}" if t.val_bpb is not None else "-"
        lines.append(f"- trial {t.index}: {status}, val_bpb {val}, changes "
                     f"{json.dumps(t.changes, sort_keys=True)[:200]}")
    return "\n".join(lines) or "(no trials yet)"


def history_text(rows: Sequence[MechanismRow]) -> str:
    if not rows:
        return "(none yet)"
    out = []
    for r in rows:
        line = f"- {r.name} (field: {r.field or 'unstated'}; {r.origin}): {r.status}"
        if r.reason:
            line += f" - {r.reason[:400]}"
        if r.score:
            line += f"; measured: {json.dumps(r.score)[:300]}"
        if r.traceback:
            line += f"\n  traceback:\n  {r.traceback[-1500:]}"
        out.append(line)
    return "\n".join(out)


class LLMDesigner:
    SYSTEM = ("You improve the search strategy of an automated research loop by writing "
              "search mechanisms: small Python classes the loop calls at fixed points. "
              "Think about what would make the search find better configurations sooner. "
              "Follow the interface exactly; your code runs in a sandbox with no network "
              "and no files.")

    def __init__(self, provider: Provider, run_id: str, outer: OuterSettings,
                 max_tokens: int, task_text: str = "") -> None:
        self.task_text = task_text  # the task's description and what val_bpb means there
        self.provider = provider
        self.run_id = run_id
        self.outer = outer
        self.max_tokens = max_tokens_for("mechanism", max_tokens)

    def _ask(self, design: Design, step: str, prompt: str, trial: int, round_: int,
             history: list[ChatMessage] | None = None,
             schema: dict[str, Any] | None = None) -> str:
        messages = (*(history or []), ChatMessage("user", prompt))
        request = LLMRequest(self.SYSTEM, tuple(messages), self.max_tokens, None,
                             CallTag(self.run_id, trial, len(design.steps), f"level2-{step}",
                                     f"l2-round-{round_}"), response_schema=schema)
        text = self.provider.complete(request).text
        design.steps.append({"step": step, "prompt": prompt, "output": text})
        return text

    def design(self, trial: int, round_: int, trace: Sequence[TrialRecord],
               rows: Sequence[MechanismRow]) -> Design:
        d = Design("", "", "", "")
        domains = ""
        if self.outer.explore_domains:
            domains = ("\n\n# Fields you might draw from\n"
                       + "\n".join(f"- {x}" for x in self.outer.explore_domains))
        task = f"# The task\n{self.task_text}\n\n" if self.task_text else ""
        explore = self._ask(d, "explore", (
            task + "# The mechanism interface of the inner loop\n" + interface_docs()
            + "\n\n# The search so far (oldest first)\n" + trace_text(trace)
            + "\n\n# Earlier mechanisms of this run, their measured effects and failures\n"
            + history_text(rows) + domains
            + "\n\n# Step 1: explore\nPropose three different ideas for a new search "
              "mechanism that would help this search. For each, say which field of "
              "knowledge it comes from, in your own words, and which hooks it would use."),
            trial, round_)
        critique = self._ask(d, "critique", (
            f"Ideas:\n{explore}\n\n# Step 2: critique and select\nCritique each idea "
            "against the trace and the earlier mechanisms' results; select the one most "
            "likely to help. End with the lines `SELECTED: <idea>` and `FIELD: <field>`."),
            trial, round_)
        spec_text = self._ask(d, "spec", (
            f"Selection:\n{critique}\n\n# Step 3: specification\nSpecify the selected "
            'mechanism as one JSON object: {"name": "snake_case_name", "field": "the field '
            'it comes from", "hooks": ["filter", ...], "description": "what each hook does '
            'and why"}.'), trial, round_, schema=SPEC_SCHEMA)
        spec = _json_object(spec_text)
        d.name = _name(str(spec.get("name", "")) or f"mechanism_{round_}")
        d.field = str(spec.get("field") or _line(critique, "FIELD") or "unstated")[:200]
        d.description = str(spec.get("description", ""))[:2000]
        prompt = (f"Specification:\n{spec_text}\n\n# Step 4: code\nWrite the mechanism as "
                  "ONE Python module defining ONE class with a no-argument constructor and "
                  "the specified hooks, following the interface above. Answer with the "
                  "module in one ```python block.")
        history: list[ChatMessage] = []
        for attempt in range(1 + self.outer.code_retries):
            text = self._ask(d, "code" if attempt == 0 else "code-fix", prompt, trial,
                             round_, history)
            match = CODE_FENCE.search(text)
            d.source = match.group(1) if match else text
            verdict = static_check(d.source)
            if verdict.passed or attempt == self.outer.code_retries:
                break
            history += [ChatMessage("user", prompt), ChatMessage("assistant", text)]
            prompt = (f"The static gate rejected it: {verdict.reason}\n{verdict.traceback}"
                      "\nFix it and answer with the whole module in one ```python block.")
        return d


def _json_object(text: str) -> dict[str, Any]:
    """The specification, read as tolerantly (and as capped) as a proposal is."""
    try:
        return read_object(text, SPEC_SHAPE)[0]
    except ProposalError as exc:
        raise DesignError(f"the specification is not a JSON object ({exc}): "
                          f"{text[:300]!r}") from None


def _line(text: str, key: str) -> str:
    match = re.search(rf"^\s*{key}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _name(raw: str) -> str:
    name = re.sub(r"\W+", "_", raw.strip().lower()).strip("_")[:40] or "mechanism"
    return name if name[0].isalpha() else f"m_{name}"


def unique_name(name: str, taken: set[str]) -> str:
    if name not in taken and name not in library.names():
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"
