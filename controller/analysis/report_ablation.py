"""The ablation report: the arms table, small-multiple best-so-far panels, every
repeat's fresh-seed Δ, the best run, and each run's mechanisms with their status.

One direction everywhere: every Δ column and every plotted curve is best minus baseline
in the loss the search minimised (val_bpb, a task's metric, or its negation when the
task maximises it), so lower is better (the summary's area under the improvement curve is shown
negated, as the mean best Δ over the budget). Arms whose every run came out the same as
another arm's are named, since their rows would otherwise read as two independent
confirmations of one result.
"""

from __future__ import annotations

import html

from controller.analysis import plots
from controller.analysis.curves import points
from controller.analysis.data import SURROGATE_NOTE
from controller.analysis.pages import (
    Report,
    ci,
    diff_html,
    fence,
    img,
    num,
    page,
    table_html,
    table_md,
)
from controller.analysis.summary import AblationSummary, ArmSummary
from controller.research.task import FORGEABLE, GPT, Objective

ARM_HEADERS = ("arm", "runs", "trials per run", "Δ{loss} fresh seeds ↓ [95% t CI]",
               "Δ{loss} in search ↓ [95% t CI]", "mean best Δ over the budget ↓ [95% t CI]",
               "test vs control", "p", "p (Holm)", "LLM tokens", "LLM cost $",
               "identical to")
DIRECTION = ("↓ lower is better in every Δ column and every plot: Δ is best minus baseline "
             "in {loss}, so a negative Δ beat the baseline.")


def _objective(summary: AblationSummary) -> Objective:
    runs = [r for a in summary.arms for r in a.runs]
    return runs[0].objective if runs else GPT


def loss_name(obj: Objective) -> str:
    """What the search minimised: the metric, or -metric for a maximised one."""
    return f"-{obj.metric}" if obj.maximize else obj.metric


def direction(summary: AblationSummary) -> str:
    """The one direction of every Δ, naming the loss."""
    obj = _objective(summary)
    loss = (f"-{obj.metric} (the search minimises the negated {obj.metric}; a negative Δ is "
            f"a higher {obj.metric})" if obj.maximize else obj.metric)
    text = DIRECTION.format(loss=loss)
    return f"{text} {FORGEABLE}." if obj.self_reported else text
MECH_HEADERS = ("arm", "repeat", "run", "mechanism", "origin", "status", "finding",
                "hook calls", "effective", "failures")


def identical_arms(summary: AblationSummary) -> dict[str, str]:
    """Arm -> the earlier arm whose every repeat it matches exactly (the summary's
    `identical_to`: Δ on fresh seeds, Δ in the search and the whole best-so-far curve)."""
    return {a.name: a.identical_to for a in summary.arms if a.identical_to}


def _trials_per_run(a: ArmSummary) -> str:
    counts = sorted(set(a.trials.values()))
    if not counts:
        return "–"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def arm_rows(summary: AblationSummary, identical: dict[str, str]) -> list[list[str]]:
    rows = []
    for a in summary.arms:
        c = a.comparison
        rows.append([
            f"{a.name}: {a.title}", str(len(a.runs)), _trials_per_run(a), ci(a.fresh_ci),
            ci(a.search_ci), ci(a.auc_ci, negate=True),
            "control" if a.name == summary.control else (c.test if c else "–"),
            num(c.p_value, ".3g") if c else "–", num(c.p_holm, ".3g") if c else "–",
            str(a.llm_tokens), f"{a.llm_cost_usd:.4f}", identical.get(a.name, "–")])
    return rows


def mechanism_rows(summary: AblationSummary) -> list[list[str]]:
    """One row per mechanism per run, with the status it ended the run in."""
    rows = []
    for a in summary.arms:
        for repeat, data in zip(a.repeats, a.runs, strict=True):
            for m in data.mechanisms:
                rows.append([a.name, str(repeat), data.run.id, m.mechanism, m.origin,
                             m.status or "–", m.finding or "–", str(m.calls),
                             str(m.effective), str(m.failures)])
    return rows


def _identical_note(identical: dict[str, str]) -> str:
    if not identical:
        return ""
    pairs = "; ".join(f"{arm} = {twin}" for arm, twin in identical.items())
    return (f"Identical arms: {pairs}. Every repeat gave the same result as the named arm "
            "(same fresh-seed Δ, same search Δ, same best-so-far curve): the arms did not "
            "differ in what ran, so their rows are one result, not two.")


def ablation_report(summary: AblationSummary) -> Report:
    spec = summary.spec
    title = f"Ablation {spec.id}"
    identical = identical_arms(summary)
    loss = loss_name(_objective(summary))
    headers = [h.format(loss=loss) for h in ARM_HEADERS]
    definition = [
        ["task", spec.task], ["repeats per arm", str(spec.repeats)],
        ["trial budget per run", str(spec.trials)],
        ["LLM token budget per run", str(spec.max_llm_tokens or "unlimited")],
        ["LLM", "none (offline)" if spec.llm is None else
         f"{spec.llm.get('provider')} {spec.llm.get('model', '')}".strip()],
        ["search seeds (repeat r)", f"{spec.seed} + 1000 r, shared by every arm (paired)"],
        ["fresh seeds for re-evaluation", f"{spec.fresh_seeds} per repeat, from "
                                          f"{spec.fresh_seed_of(0)}"],
        ["Level 1.5 / Level 2 every (trials), Level 2 window",
         " / ".join(str(v or "run default") for v in (spec.l15_every, spec.l2_every,
                                                     spec.l2_window))],
        ["trial scoring", "in the controller from the knobs (surrogate, no sandbox job)"
         if spec.in_process else "a sandbox job per trial"],
        ["measured noise sigma of one evaluation", num(summary.noise_sigma, ".2e")],
        ["control arm", summary.control]]
    rows = arm_rows(summary, identical)
    curve_png = plots.arm_curves({a.name: a.curves for a in summary.arms}, summary.control,
                                 f"best-so-far Δ{loss} per arm: mean and 95% bootstrap band",
                                 identical, loss)
    delta_png = plots.arm_deltas({a.name: list(a.fresh_delta.values()) for a in summary.arms},
                                 summary.noise_sigma, "final best re-evaluated on fresh seeds",
                                 loss)
    best = summary.best
    mech = mechanism_rows(summary)
    no_mech = "No run of this ablation tried a mechanism."
    explain = (f"Δ{loss} fresh seeds: each run's final best and the baseline re-evaluated on "
               "seeds no search saw. In search: best minus baseline as the search saw them "
               "(biased: the best of many noisy draws). Mean best Δ over the budget: the "
               "best-so-far Δ averaged over trials 1..T (the negated area under the "
               "improvement curve; more negative = improved sooner). p: paired permutation "
               "test against the control over repeats with the same seed (Mann-Whitney U "
               "when unpaired), Holm-corrected over the arms.")
    note = SURROGATE_NOTE if spec.task == "surrogate" else ""
    same = _identical_note(identical)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note" id="testbed">{html.escape(note)}</p>')
    body += [table_html(("", ""), definition, "definition"), "<h2>Arms</h2>",
             f'<p id="direction">{html.escape(direction(summary))}</p>',
             table_html(headers, rows, "arms"), f"<p>{html.escape(explain)}</p>"]
    if same:
        body.append(f'<p class="same" id="identical">{html.escape(same)}</p>')
    body += [f'<p class="warn">{html.escape(w)}</p>' for w in summary.warnings]
    body += ["<h2>Best so far</h2>", img(curve_png, "best-so-far panels per arm", "curves"),
             img(delta_png, "fresh-seed deltas per arm", "deltas")]
    if best is not None:
        chart, _ = plots.progress_chart(points(best.trials), f"best run {best.run.id}",
                                        best.objective)
        body += [f"<h2>Best run: {html.escape(best.run.id)}</h2>",
                 img(chart, "best-so-far chart of the best run", "progress"),
                 diff_html(best.best_diff, "diff") if best.best_diff
                 else "<pre id='diff'>no improvement kept</pre>"]
    body += ["<h2>Mechanisms of each run</h2>",
             table_html(MECH_HEADERS, mech, "mechanisms") if mech
             else f"<p>{html.escape(no_mech)}</p>"]
    md = [f"# {title}", *([f"> {note}"] if note else []), table_md(("", ""), definition),
          "## Arms", direction(summary), table_md(headers, rows), explain,
          *([f"**{same}**"] if same else []),
          *[f"- **warning:** {w}" for w in summary.warnings],
          "## Mechanisms of each run", table_md(MECH_HEADERS, mech) if mech else no_mech]
    if best is not None:
        md += [f"## Best run {best.run.id}",
               fence(best.best_diff or 'no improvement kept')]
    return Report(page(title, "\n".join(body)), "\n\n".join(md) + "\n")
