"""Self-contained reports: one HTML page (figures inlined as base64 PNG, no scripts, no
external links) and a Markdown summary, for a single run or for an ablation."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from controller.analysis import plots
from controller.analysis.curves import points
from controller.analysis.data import SURROGATE_NOTE, RunData
from controller.analysis.stats import Interval
from controller.analysis.summary import AblationSummary

CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{background:#fff6d6;border-left:4px solid #e0a800;padding:8px 12px}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:8px 12px}
pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}img{max-width:100%}"""


@dataclass(frozen=True)
class Report:
    html: str
    markdown: str


def _num(value: float | None, fmt: str = ".6f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def _ci(ci: Interval | None, fmt: str = "+.2e") -> str:
    if ci is None or ci.n == 0 or not math.isfinite(ci.estimate):
        return "–"
    if not math.isfinite(ci.low):
        return f"{ci.estimate:{fmt}} (n={ci.n}, no CI)"
    return f"{ci.estimate:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}]"


def _table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], id_: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    ident = f' id="{id_}"' if id_ else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def _img(data: str, alt: str, id_: str) -> str:
    return f'<img id="{id_}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _mechanism_rows(data: RunData) -> list[list[str]]:
    return [[m.mechanism, m.origin, m.status, str(m.calls), str(m.effective), str(m.failures),
             ", ".join(f"{k}: {v}" for k, v in sorted(m.effects.items()))]
            for m in data.mechanisms]


MECH_HEADERS = ("mechanism", "origin", "status", "hook calls", "effective", "failures",
                "effects")
NO_MECHANISMS = "No mechanism was tried and no hook call was recorded."


def run_report(data: RunData) -> Report:
    run = data.run
    title = f"Run {run.id}"
    trials = [t for t in data.trials if t.finished]
    crashes = sum(1 for t in trials if t.status is not None and t.status.value == "crash")
    kept = sum(1 for t in trials if t.status is not None and t.status.value == "keep") - 1
    facts = [
        ["task", data.preset], ["state", run.state.value],
        ["trials (after the baseline)", f"{max(len(trials) - 1, 0)} of {data.budget}"],
        ["kept / crashed", f"{max(kept, 0)} / {crashes}"],
        ["of the crashes: over_budget / seed_ignored",  # declared by the trusted side
         " / ".join(str(sum(t.job_status == s for t in trials))
                    for s in ("over_budget", "seed_ignored"))],
        ["baseline val_bpb", _num(run.baseline_val_bpb)],
        ["best val_bpb", f"{_num(run.best_val_bpb)} (trial {run.best_trial})"],
        ["Δval_bpb in the search",
         _num(None if run.best_val_bpb is None or run.baseline_val_bpb is None
              else run.best_val_bpb - run.baseline_val_bpb, "+.6f")],
        ["noise sigma (baseline seeds)", _num(run.noise_sigma, ".2e")],
        ["LLM calls / tokens / cost", f"{data.llm_calls} / {run.llm_tokens_used} / "
                                      f"${run.llm_cost_usd:.4f}"],
        ["summary", run.summary]]
    chart = plots.progress_chart(points(data.trials), f"{run.id}: val_bpb per trial")
    note = SURROGATE_NOTE if data.preset == "surrogate" else ""
    mech = _mechanism_rows(data)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note" id="testbed">{html.escape(note)}</p>')
    body += [_table_html(("", ""), facts, "facts"), "<h2>Progress</h2>",
             _img(chart, "best-so-far chart: every trial, kept ones marked", "progress"),
             "<h2>Mechanisms</h2>",
             _table_html(MECH_HEADERS, mech, "mechanisms") if mech
             else f"<p>{html.escape(NO_MECHANISMS)}</p>",
             "<h2>Best train.py against the baseline</h2>",
             f"<pre id='diff'>{html.escape(data.best_diff or 'no improvement kept')}</pre>"]
    md = [f"# {title}", *( [f"> {note}"] if note else []), _table_md(("", ""), facts),
          "## Mechanisms", _table_md(MECH_HEADERS, mech) if mech else NO_MECHANISMS,
          "## Best train.py against the baseline",
          f"```diff\n{data.best_diff or 'no improvement kept'}\n```"]
    return Report(_page(title, "\n".join(body)), "\n\n".join(md) + "\n")


ARM_HEADERS = ("arm", "n", "Δval_bpb fresh seeds [95% CI]", "Δval_bpb in search [95% CI]",
               "nAUC [95% CI]", "test vs control", "p", "p (Holm)", "LLM tokens",
               "LLM cost $")


def _arm_rows(summary: AblationSummary) -> list[list[str]]:
    rows = []
    for a in summary.arms:
        c = a.comparison
        rows.append([
            f"{a.name}: {a.title}", str(len(a.runs)), _ci(a.fresh_ci), _ci(a.search_ci),
            _ci(a.auc_ci), "control" if a.name == summary.control else (c.test if c else "–"),
            _num(c.p_value, ".3g") if c else "–", _num(c.p_holm, ".3g") if c else "–",
            str(a.llm_tokens), f"{a.llm_cost_usd:.4f}"])
    return rows


def _ablation_mechanisms(summary: AblationSummary) -> list[list[str]]:
    rows = []
    for a in summary.arms:
        for m in a.mechanisms.values():
            rows.append([a.name, m.mechanism, m.origin, "", str(m.calls), str(m.effective),
                         str(m.failures),
                         ", ".join(f"{k}: {v}" for k, v in sorted(m.effects.items()))])
    return rows


def ablation_report(summary: AblationSummary) -> Report:
    spec = summary.spec
    title = f"Ablation {spec.id}"
    definition = [
        ["task", spec.task], ["repeats per arm", str(spec.repeats)],
        ["trial budget per run", str(spec.trials)],
        ["LLM token budget per run", str(spec.max_llm_tokens or "unlimited")],
        ["LLM", "none (offline)" if spec.llm is None else
         f"{spec.llm.get('provider')} {spec.llm.get('model', '')}".strip()],
        ["search seeds (repeat r)", f"{spec.seed} + 1000 r, shared by every arm (paired)"],
        ["fresh seeds for re-evaluation", f"{spec.fresh_seeds} per repeat, from "
                                          f"{spec.fresh_seed_of(0)}"],
        ["measured noise sigma of one evaluation", _num(summary.noise_sigma, ".2e")],
        ["control arm", summary.control]]
    rows = _arm_rows(summary)
    curves = {a.name: a.curves for a in summary.arms}
    curve_png = plots.arm_curves(curves, "best-so-far improvement: mean and 95% bootstrap band")
    delta_png = plots.arm_deltas({a.name: list(a.fresh_delta.values()) for a in summary.arms},
                                 summary.noise_sigma, "final best re-evaluated on fresh seeds")
    best = summary.best
    best_chart = plots.progress_chart(points(best.trials), f"best run {best.run.id}") \
        if best is not None else ""
    mech = _ablation_mechanisms(summary)
    mech_known = any(a.mechanisms_known for a in summary.arms)
    no_mech = NO_MECHANISMS if not mech_known else "No mechanism hook calls were recorded."
    explain = ("Δval_bpb fresh seeds: each run's final best and the baseline re-evaluated on "
               "seeds no search saw (negative = better). In search: best minus baseline as "
               "the search saw them (biased: the best of many noisy draws). nAUC: mean "
               "improvement over the trial budget (higher = faster). p: paired permutation "
               "test against the control over repeats with the same seed (Mann-Whitney U "
               "when unpaired), Holm-corrected over the arms.")
    note = SURROGATE_NOTE if spec.task == "surrogate" else ""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note" id="testbed">{html.escape(note)}</p>')
    body += [_table_html(("", ""), definition, "definition"), "<h2>Arms</h2>",
             _table_html(ARM_HEADERS, rows, "arms"), f"<p>{html.escape(explain)}</p>"]
    body += [f'<p class="warn">{html.escape(w)}</p>' for w in summary.warnings]
    body += ["<h2>Best so far</h2>", _img(curve_png, "best-so-far curves per arm", "curves"),
             _img(delta_png, "fresh-seed deltas per arm", "deltas")]
    if best is not None:
        body += [f"<h2>Best run: {html.escape(best.run.id)}</h2>",
                 _img(best_chart, "best-so-far chart of the best run", "progress"),
                 f"<pre id='diff'>{html.escape(best.best_diff or 'no improvement kept')}"
                 "</pre>"]
    body += ["<h2>Mechanisms</h2>",
             _table_html(("arm", *MECH_HEADERS), mech, "mechanisms") if mech
             else f"<p>{html.escape(no_mech)}</p>"]
    md = [f"# {title}", *([f"> {note}"] if note else []), _table_md(("", ""), definition),
          "## Arms", _table_md(ARM_HEADERS, rows), explain,
          *[f"- **warning:** {w}" for w in summary.warnings],
          "## Mechanisms", _table_md(("arm", *MECH_HEADERS), mech) if mech else no_mech]
    if best is not None:
        md += [f"## Best run {best.run.id}",
               f"```diff\n{best.best_diff or 'no improvement kept'}\n```"]
    return Report(_page(title, "\n".join(body)), "\n\n".join(md) + "\n")
