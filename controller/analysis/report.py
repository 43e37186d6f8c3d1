"""Self-contained reports: one HTML page (figures inlined as base64 PNG, no scripts, no
external links) and a Markdown summary, for a single run (here) or for an ablation
(report_ablation.py).

The run report's counts (facts, the chart's legend, the caption under it and the trials
table) all come from one `plots.Layout`, so they cannot disagree.
"""

from __future__ import annotations

import html

from controller.analysis import plots
from controller.analysis.curve_plot import curves_chart
from controller.analysis.curves import points
from controller.analysis.data import SURROGATE_NOTE, RunData
from controller.analysis.pages import (
    Report,
    diff_html,
    fence,
    img,
    num,
    page,
    short,
    table_html,
    table_md,
)
from controller.analysis.report_ablation import ablation_report
from controller.research.task import Objective
from controller.store.records import TrialRecord, TrialStatus

__all__ = ["Report", "ablation_report", "run_report"]

MECH_HEADERS = ("mechanism", "origin", "status", "finding", "hook calls", "effective",
                "failures", "effects")
NO_MECHANISMS = "No mechanism was tried and no hook call was recorded."
TRIAL_HEADERS = ("trial", "source", "description", "status", "val_bpb", "Δ vs baseline",
                 "seconds", "diff")  # val_bpb: the task's metric


def trial_headers(objective: Objective) -> tuple[str, ...]:
    return (*TRIAL_HEADERS[:4], objective.metric, *TRIAL_HEADERS[5:])


def mechanism_rows(data: RunData) -> list[list[str]]:
    return [[m.mechanism, m.origin, m.status or "–", m.finding or "–", str(m.calls),
             str(m.effective), str(m.failures),
             ", ".join(f"{k}: {v}" for k, v in sorted(m.effects.items()))]
            for m in data.mechanisms]


def _status(t: TrialRecord) -> str:
    status = t.status.value if t.status else "–"
    if t.job_status and t.job_status != "ok" and status != "keep":
        status += f" ({t.job_status})"
    return status


def _delta(t: TrialRecord, baseline: float | None) -> float | None:
    """The loss's change against the baseline (negative: better)."""
    if t.val_bpb is None or baseline is None or t.index == 0:
        return None
    return t.val_bpb - baseline


def _trial_cells(t: TrialRecord, baseline: float | None, diffs: dict[int, str],
                 objective: Objective) -> list[str]:
    """One row of the trials table, as text (escaped by the renderer), in the task's
    metric: a maximised metric's stored loss is negated back."""
    delta = _delta(t, baseline)
    return [str(t.index), t.proposal_source or ("baseline" if t.index == 0 else "–"),
            short(t.description), _status(t),
            num(None if t.val_bpb is None else objective.shown(t.val_bpb)),
            num(None if delta is None else objective.shown(delta), "+.6f"),
            f"{t.seconds:.1f}", "diff" if t.index in diffs else ""]


def _trials_html(data: RunData, trials: list[TrialRecord]) -> str:
    rows = []
    baseline = data.run.baseline_val_bpb
    for t in trials:
        cells = [html.escape(c) for c in _trial_cells(t, baseline, data.trial_diffs,
                                                      data.objective)]
        delta = _delta(t, baseline)
        tone = "" if delta is None or delta == 0 else ("better" if delta < 0 else "worse")
        cells[5] = f'<span class="{tone}">{cells[5]}</span>' if tone else cells[5]
        if cells[7]:
            cells[7] = f'<a href="#trial-diff-{t.index}">diff</a>'
        kind = ("baseline " if t.index == 0 else "") + (t.status.value if t.status else "")
        tds = "".join(f'<td class="text">{c}</td>' if i in (1, 2) else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        rows.append(f'<tr id="trial-{t.index}" class="{kind}">{tds}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in trial_headers(data.objective))
    return (f'<table id="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _trial_diffs_html(data: RunData, trials: list[TrialRecord]) -> list[str]:
    out = []
    for t in trials:
        diff = data.trial_diffs.get(t.index)
        if diff is None:
            continue
        label = html.escape(f"trial {t.index} ({_status(t)}): {short(t.description, 120)}")
        body = diff_html(diff, f"trial-diff-{t.index}-body") if diff.strip() \
            else "<p>no change to train.py</p>"
        out.append(f'<details id="trial-diff-{t.index}"><summary>{label}</summary>{body}'
                   "</details>")
    return out


def _caption(counts: dict[str, int], total: int, objective: Objective) -> str:
    parts = [f"{name} {n}" for name, n in counts.items() if name != "off the axis"]
    text = f"{total} finished trials: " + ", ".join(parts) + "."
    off = counts["off the axis"]
    where, mark = ("below", "▼ on its bottom") if objective.maximize else ("above",
                                                                         "▲ on its top")
    if off:
        text += (f" {off} discarded trial(s) lie {where} the axis: drawn as {mark} edge "
                 "with their value, counted with the discarded in the table.")
    text += " Crashes have no value: they sit in the strip under the axis."
    return text


def _curves_html(data: RunData, trials: list[TrialRecord]) -> list[str]:
    """The trials' reported curves, when any trial reported progress."""
    chart = curves_chart(data.curves, trials, f"{data.run.id}: reported training curves",
                         data.objective)
    if not chart:
        return []
    pruned = sum(t.status is TrialStatus.PRUNED for t in trials)
    return ["<h2>Training curves</h2>",
            img(chart, "each trial's reported curve, by what became of it", "curves"),
            f'<p id="curves-note">{len(data.curves)} trials reported progress; {pruned} '
            "were pruned. The curves are the candidates' own claims; only the trusted "
            "score decides.</p>"]


def run_report(data: RunData) -> Report:
    run = data.run
    title = f"Run {run.id}"
    trials = [t for t in data.trials if t.finished]
    obj = data.objective
    metric, show = obj.metric, obj.shown
    chart, lay = plots.progress_chart(points(trials), f"{run.id}: {metric} per trial", obj)
    counts = lay.counts()
    facts = [
        ["task", data.preset], ["state", run.state.value],
        ["trials (after the baseline)", f"{max(len(trials) - 1, 0)} of {data.budget}"],
        ["kept / discarded / crashed (after the baseline)",
         f"{counts['kept']} / {counts['discarded'] + counts['off the axis']} / "
         f"{counts['crashed'] - sum(t.index == 0 for t in lay.crashed)}"],
        ["of the crashes: over_budget / seed_ignored",  # declared by the trusted side
         " / ".join(str(sum(t.job_status == s for t in trials))
                    for s in ("over_budget", "seed_ignored"))],
        ["objective", obj.describe()],
        [f"baseline {metric}", num(None if run.baseline_val_bpb is None
                                   else show(run.baseline_val_bpb))],
        [f"best {metric}", f"{num(None if run.best_val_bpb is None else show(run.best_val_bpb))}"
                           f" (trial {run.best_trial})"],
        [f"Δ{metric} in the search ({obj.better} is better)",
         num(None if run.best_val_bpb is None or run.baseline_val_bpb is None
             else show(run.best_val_bpb - run.baseline_val_bpb), "+.6f")],
        ["noise sigma (baseline seeds)", num(run.noise_sigma, ".2e")],
        ["LLM calls / tokens / cost", f"{data.llm_calls} / {run.llm_tokens_used} / "
                                      f"${run.llm_cost_usd:.4f}"],
        ["summary", run.summary]]
    caption = _caption(counts, len(trials), obj)
    note = SURROGATE_NOTE if data.preset == "surrogate" else ""
    mech = mechanism_rows(data)
    best = data.best_diff or "no improvement kept"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note" id="testbed">{html.escape(note)}</p>')
    if obj.self_reported:
        body.append(f'<p class="warn" id="forgeable">{html.escape(obj.describe())}</p>')
    body += [table_html(("", ""), facts, "facts"), "<h2>Progress</h2>",
             img(chart, "best-so-far chart: every trial, kept ones marked", "progress"),
             f'<p id="counts">{html.escape(caption)}</p>',
             *_curves_html(data, trials),
             "<h2>Trials</h2>", _trials_html(data, trials),
             "<h2>Mechanisms</h2>",
             table_html(MECH_HEADERS, mech, "mechanisms") if mech
             else f"<p>{html.escape(NO_MECHANISMS)}</p>",
             "<h2>Best train.py against the baseline</h2>",
             diff_html(best, "diff") if data.best_diff else f"<pre id='diff'>{best}</pre>"]
    diffs = _trial_diffs_html(data, trials)
    if diffs:
        body += ["<h2>Each trial's change to its parent</h2>", *diffs]
    rows = [_trial_cells(t, run.baseline_val_bpb, data.trial_diffs, obj)[:7] for t in trials]
    md = [f"# {title}", *([f"> {note}"] if note else []), table_md(("", ""), facts),
          "## Trials", caption, table_md(trial_headers(obj)[:7], rows),
          "## Mechanisms", table_md(MECH_HEADERS, mech) if mech else NO_MECHANISMS,
          "## Best train.py against the baseline", fence(best)]
    return Report(page(title, "\n".join(body)), "\n\n".join(md) + "\n")
