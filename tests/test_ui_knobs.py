"""`bilevel ui`'s knob views as a user works them, in headless Chromium over the DevTools
pipe: a finished run in a real state dir (written through the store's own API, as the
loop writes one; read back by `bilevel ui` without a controller) whose trials change
knobs, one of them named in live markup. The table grows a column per knob that sorts
and filters, slices and parallel coordinates draw a point per measured trial, the
importance names its method and ranks the knob that drives the metric first, two trials
compare side by side, the export holds every finished trial, and no hostile name or
description becomes markup. No Docker: the store is read directly."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.research.settings import Budgets, RunSettings, TaskSettings
from controller.store.artifacts import ArtifactStore
from controller.store.records import (
    EventKind,
    RunState,
    TrialFinish,
    TrialMeta,
    TrialStatus,
)
from controller.store.runs import RunStore
from controller.ui.importance import MIN_TRIALS
from tests.test_ui import Page, _get, _ui
from tests.test_ui_live import Browser, _browser, _until

RUN_ID = "run-knobs0123456"
FAILED_ID = "run-failed012345"
FAILED_REASON = "the baseline crashed: ModuleNotFoundError: No module named 'torch'"
# Markup that would make an element (and run its handler) if the page parsed it.
HOSTILE_KNOB = '<img src=x onerror="document.body.dataset.pwned=1">'
HOSTILE_TEXT = '<script>document.title="pwned"</script><b>bold</b>'
FORMULA = '=HYPERLINK("http://example.invalid","x") a spreadsheet formula'
BASELINE = {"LR": 0.01, "DEPTH": 4, "ACT": "relu"}
T0 = 1_700_000_000.0
# (changes, accuracy or None for a crash, status, description) of trials 0..12; each
# edits the incumbent (the last kept trial). Accuracy is maximised; LR drives it.
TRIALS: list[tuple[dict[str, Any], float | None, str, str]] = [
    ({}, 0.80, "keep", "baseline"),
    ({"LR": 0.003, HOSTILE_KNOB: 1}, 0.86, "keep", HOSTILE_TEXT),
    ({"DEPTH": 6}, 0.855, "discard", "deeper"),
    ({"LR": 0.1}, 0.55, "discard", "CMA-ES advisor: generation 1"),
    ({"LR": 0.001}, 0.70, "discard", "smaller lr"),
    ({"ACT": "gelu"}, None, "crash", "gelu"),
    ({"LR": 0.002, "DEPTH": 3}, 0.84, "discard", "two knobs"),
    ({"LR": 0.05}, 0.60, "discard", "larger lr"),
    ({"DEPTH": 8}, 0.865, "keep", "deeper still"),
    ({"LR": 0.03}, 0.64, "discard", "larger lr again"),
    ({"ACT": "gelu", "DEPTH": 2}, 0.85, "discard", FORMULA),
    ({"LR": 0.0005}, None, "crash", "tiny lr"),
    ({"LR": 0.004}, 0.858, "discard", "near"),
]
KNOBS = ["LR", HOSTILE_KNOB, "DEPTH", "ACT"]  # in the order trials first change them
# The curves trials 1-4 reported while training (the candidates' claims); trial 2
# reported a NaN at step 30 (stored as null: a gap in its line).
CURVES: dict[int, list[list[Any]]] = {
    i: [[10 * s, None if (i, s) == (2, 3) else 0.5 + 0.01 * i * s] for s in range(1, 6)]
    for i in range(1, 5)}


def configs() -> tuple[dict[int, dict[str, Any]], dict[int, int]]:
    """Each trial's knob values (None: not known) and its parent, as the page should
    work them out: the incumbent's values plus the trial's changes."""
    out: dict[int, dict[str, Any]] = {0: {k: BASELINE.get(k) for k in KNOBS}}
    parents: dict[int, int] = {}
    incumbent = 0
    for i, (changes, _, status, _) in enumerate(TRIALS[1:], start=1):
        parents[i] = incumbent
        out[i] = {**out[incumbent], **changes}
        if status == "keep":
            incumbent = i
    return out, parents


def write_runs(state: Path) -> None:
    """The run above and a failed one, through the store's API."""
    store = RunStore(state / "bilevel.sqlite3")
    artifacts = ArtifactStore(state / "runs")
    settings = RunSettings(task=TaskSettings(preset="surrogate"),
                           budgets=Budgets(max_trials=len(TRIALS) - 1)).to_dict()
    settings["task"].update({"metric": "acc", "direction": "maximize"})
    store.create_run(RUN_ID, settings)
    values, parents = configs()
    for i, (changes, acc, status, description) in enumerate(TRIALS):
        v = values[i]
        artifacts.write_trial(RUN_ID, i, "train.py", (
            f"LR = {v['LR']}\nDEPTH = {v['DEPTH']}\nACT = {v['ACT']!r}\n").encode())
        store.begin_trial(RUN_ID, i, description, changes, TrialMeta(parent=parents.get(i)))
        if i in CURVES:  # the last progress event, as the loop sends it: the whole curve
            last = CURVES[i][-1]
            store.append_event(RUN_ID, EventKind.TRIAL_PROGRESS, {
                "trial": i, "step": last[0], "value": last[1], "points": len(CURVES[i]),
                "curve_json": json.dumps(CURVES[i])})
        start = T0 + 10 * i
        store.finish_trial(RUN_ID, TrialFinish(
            index=i, status=TrialStatus(status), val_bpb=None if acc is None else -acc,
            memory_gb=0.1, metrics={}, job_status="ok" if acc is not None else "error",
            exception=None, seconds=0.1, new_best=status == "keep", started_at=start,
            ended_at=start + 0.5, proposal_source="baseline" if i == 0 else "proposer"),
            elapsed_seconds=10.0 * i)
    store.finish_run(RUN_ID, RunState.SUCCEEDED, "trial budget", "done",
                     {"state": "succeeded", "reason": "trial budget"})
    store.create_run(FAILED_ID, settings)
    store.finish_run(FAILED_ID, RunState.FAILED, FAILED_REASON, "",
                     {"state": "failed", "reason": FAILED_REASON})
    store.close()


@dataclass
class Open:
    page: Page
    browser: Browser


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Open]:
    """The run's page open in Chromium, its knob views drawn."""
    tmp = tmp_path_factory.mktemp("ui-knobs")
    state = tmp / "state"
    state.mkdir()
    write_runs(state)
    with _ui(None, state, None) as page, _browser(tmp / "chromium") as browser:
        browser.open(page.route(f"/run/{RUN_ID}"))
        _until(browser, lambda: browser.js("document.querySelectorAll('svg.slice').length")
               == len(KNOBS), "a slice plot per knob", 60)
        yield Open(page, browser)


def order(b: Browser) -> list[int]:
    return [int(n) for n in b.js(
        "[...document.querySelectorAll('#trials-table tbody tr')].map(r => r.dataset.trial)")]


def column(b: Browser, header: str) -> list[str]:
    """The shown text of the column whose header is `header`, row by row."""
    return list(b.js(f"""(() => {{
        const heads = [...document.querySelectorAll('#trials-table thead tr:first-child th')];
        const i = heads.findIndex(h => h.textContent === {json.dumps(header)});
        return [...document.querySelectorAll('#trials-table tbody tr')]
          .map(r => r.children[i].childNodes[0].textContent); }})()"""))


def set_filter(b: Browser, col: str, text: str) -> None:
    b.js(f"""(() => {{ const i = document.querySelector(
        '#trials-table input[data-col="' + CSS.escape({json.dumps(col)}) + '"]');
        i.value = {json.dumps(text)}; i.dispatchEvent(new Event('input')); }})()""")


def test_a_column_per_knob_sorts_and_filters_with_wall_seconds(opened: Open) -> None:
    b = opened.browser
    values, _ = configs()
    heads = b.js("[...document.querySelectorAll('#trials-table thead tr:first-child th')]"
                 ".map(h => h.textContent)")
    assert heads == ["cmp", "trial", "source", "description", "status", "acc",
                     "Δ vs baseline", "seconds", *KNOBS]
    assert order(b) == list(range(len(TRIALS)))
    assert column(b, "LR") == [str(values[i]["LR"]) for i in range(len(TRIALS))]
    assert column(b, HOSTILE_KNOB) == [""] + ["1"] * (len(TRIALS) - 1)  # not in the file
    # The trial's wall time (ended - started), as the terminal shows, not the job's 0.1 s.
    assert set(column(b, "seconds")) == {"0.5"}
    # Each trial says what it changed from its parent.
    changes = b.js("document.querySelector('tr[data-trial=\"3\"] .changes').textContent")
    assert changes == "LR 0.003 -> 0.1"

    b.js("document.querySelector('th[data-col=\"knob:LR\"]').click()")
    by_lr = sorted(range(len(TRIALS)), key=lambda i: (values[i]["LR"], i))
    assert order(b) == by_lr
    b.js("document.querySelector('th[data-col=\"knob:LR\"]').click()")
    assert order(b) == sorted(range(len(TRIALS)), key=lambda i: (-values[i]["LR"], i))
    assert b.js("document.querySelector('th[data-col=\"knob:LR\"]')"
                ".getAttribute('aria-sort')") == "descending"
    b.js("document.querySelector('th[data-col=\"metric\"]').click()")  # crashes last
    measured = [i for i, t in enumerate(TRIALS) if t[1] is not None]
    assert order(b) == [*sorted(measured, key=lambda i: TRIALS[i][1] or 0.0), 5, 11]

    set_filter(b, "knob:LR", "<0.004")
    assert sorted(order(b)) == [i for i in range(len(TRIALS)) if values[i]["LR"] < 0.004]
    set_filter(b, "status", "keep")
    assert sorted(order(b)) == [1, 8]  # LR < 0.004 and kept
    assert "2 of 13 trials shown" in b.js("document.getElementById('trials-shown').textContent")
    set_filter(b, "knob:LR", "")
    set_filter(b, "status", "")
    assert len(order(b)) == len(TRIALS)


def test_slices_parallel_coordinates_and_importance(opened: Open) -> None:
    b = opened.browser
    values, _ = configs()
    measured = [i for i, t in enumerate(TRIALS) if t[1] is not None]
    dots = b.js("[...document.querySelectorAll('svg.slice')].map(s => "
                "[s.dataset.knob, s.querySelectorAll('circle').length])")
    assert dots == [[k, sum(values[i][k] is not None for i in measured)] for k in KNOBS]
    # A line per measured trial whose every knob is known (trial 0 lacks the one named
    # in markup, which its file does not hold), and the page says so.
    lines = b.js("document.querySelectorAll('#parcoords polyline').length")
    assert lines == len(measured) - 1
    assert "1 with a knob value not known are left out" in b.js(
        "document.getElementById('parcoords').textContent")
    # LR's log axis (0.001 to 0.1): labelled at powers of ten.
    lr_ticks = b.js("[...document.querySelector('svg.slice[data-knob=\"LR\"]')"
                    ".querySelectorAll('text.xtick')].map(t => t.textContent)")
    assert lr_ticks == ["0.001", "0.01", "0.1"]
    method = b.js("document.getElementById('importance-method').textContent")
    assert "omega squared of a one-way ANOVA" in method and "not fANOVA" in method
    ranked = b.js("[...document.querySelectorAll('#importance-table tbody tr')]"
                  ".map(r => [...r.children].map(c => c.textContent))")
    assert ranked[0][0] == "LR" and float(ranked[0][1].rstrip(" %")) > 50
    assert {r[0] for r in ranked} == set(KNOBS)


def test_the_y_axis_ticks_fall_on_1_2_5_steps(opened: Open) -> None:
    for where in ("#plot", "svg.slice"):
        labels = opened.browser.js(f"[...document.querySelector('{where}')"
                                   ".querySelectorAll('text.ytick')].map(t => t.textContent)")
        ticks = [float(t) for t in labels]
        steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
        assert len(ticks) >= 3 and len(steps) == 1, labels
        step = steps.pop()
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0), labels
        assert all(round(t / step, 6).is_integer() for t in ticks), labels


def test_two_trials_compare_side_by_side(opened: Open) -> None:
    b = opened.browser
    for n in (2, 3):
        b.js(f"document.querySelector('input.cmp[data-trial=\"{n}\"]').click()")
    _until(b, lambda: "LR = 0.1" in (b.js(
        "document.getElementById('compare-diff').textContent") or ""), "the file diff")
    rows = b.js("[...document.querySelectorAll('#compare-table tr')]"
                ".map(r => [r.className, ...[...r.children].map(c => c.textContent)])")
    assert rows[0][1:] == ["", "trial 2", "trial 3"]
    got = {r[1]: r for r in rows[1:]}
    assert got["acc"][2:] == ["0.855000", "0.550000"]
    assert got["status"][2:] == ["discard", "discard"]
    assert got["LR"] == ["knob differs", "LR", "0.003", "0.1"]
    assert got["DEPTH"] == ["knob differs", "DEPTH", "6", "4"]
    assert got["ACT"][0] == "knob"  # the same in both
    diff = b.js("[...document.querySelectorAll('#compare-diff span')]"
                ".map(s => [s.className, s.textContent])")
    assert ["del", "-LR = 0.003"] in diff and ["add", "+LR = 0.1"] in diff
    assert ["add", "+DEPTH = 4"] in diff


def test_each_reported_training_curve_is_a_line(opened: Open) -> None:
    b = opened.browser
    _until(b, lambda: b.js("document.querySelectorAll('#curves path.curve').length") == len(CURVES),
           "a curve per trial that reported one")
    paths = b.js("[...document.querySelectorAll('#curves path.curve')]"
                 ".map(p => [p.dataset.trial, p.getAttribute('class'), p.getAttribute('d')])")
    assert [int(p[0]) for p in paths] == sorted(CURVES)
    assert [p[1] for p in paths] == [f"curve {TRIALS[i][2]}" for i in sorted(CURVES)]
    # A line through each point; the NaN at step 30 breaks trial 2's in two.
    assert [p[2].count("M") for p in paths] == [1, 2, 1, 1]
    assert [p[2].count("L") for p in paths] == [4, 2, 4, 4]


def test_export_returns_every_finished_trial_with_knob_columns(opened: Open) -> None:
    page, b = opened.page, opened.browser
    status, got = _get(page.api(f"runs/{RUN_ID}/export?format=csv"), page.key)
    assert status == 200 and got["rows"] == len(TRIALS)
    rows = list(csv.DictReader(io.StringIO(got["text"])))
    assert [int(r["trial"]) for r in rows] == list(range(len(TRIALS)))
    values, _ = configs()
    assert [float(r["LR"]) for r in rows] == [values[i]["LR"] for i in range(len(TRIALS))]
    assert rows[3]["acc"] == "0.55" and rows[5]["acc"] == "" and rows[5]["status"] == "crash"
    assert rows[10]["description"] == "'" + FORMULA  # a spreadsheet reads it as text
    assert rows[1][HOSTILE_KNOB] == "1" and rows[0][HOSTILE_KNOB] == ""
    status, got = _get(page.api(f"runs/{RUN_ID}/export?format=json"), page.key)
    records = json.loads(got["text"])
    assert len(records) == len(TRIALS) and records[4]["LR"] == 0.001
    assert records[0]["seconds"] == 0.5
    b.js("document.getElementById('export-csv').click()")
    _until(b, lambda: "saved" in b.js("document.getElementById('export-status').textContent"),
           "the export saved")
    assert b.js("document.getElementById('export-status').textContent") == \
        f"saved {RUN_ID}-trials.csv: {len(TRIALS)} trials"


def test_too_few_trials_for_importance_are_said(opened: Open) -> None:
    """The same page, on the failed run: nothing measured, so no share is shown."""
    status, got = _get(opened.page.api(f"runs/{FAILED_ID}/trials"), opened.page.key)
    assert status == 200 and got["importance"]["knobs"] == []
    assert got["importance"]["note"] == ("too few measured trials to say anything: 0 "
                                         f"(at least {MIN_TRIALS} needed)")


def test_the_runs_list_shows_direction_and_why_a_run_failed(opened: Open) -> None:
    b = opened.browser
    b.js("location.hash = '#/'")
    _until(b, lambda: b.js("document.querySelectorAll('#runs-table tr.run').length") == 2,
           "both runs listed")
    rows = b.js("Object.fromEntries([...document.querySelectorAll('#runs-table tr.run')]"
                ".map(r => [r.children[0].textContent, [...r.children].map(c => c.textContent)]))")
    assert rows[FAILED_ID][1] == "failed" and rows[FAILED_ID][8] == FAILED_REASON
    assert rows[RUN_ID][4] == "acc ↑ max" and rows[RUN_ID][7] == "0.865000"
    b.js(f"location.hash = '#/run/{RUN_ID}'")
    _until(b, lambda: b.js("document.querySelectorAll('svg.slice').length") == len(KNOBS),
           "the run's page again")


def test_deny_a_knob_name_and_description_in_markup_become_no_element(opened: Open) -> None:
    b = opened.browser
    texts = b.js(f"""[
        document.querySelector('th[data-col="knob:' + CSS.escape({json.dumps(HOSTILE_KNOB)})
          + '"]').textContent,
        document.querySelector('svg.slice[data-knob="' + CSS.escape({json.dumps(HOSTILE_KNOB)})
          + '"] text.knob title').textContent,
        document.querySelector('tr[data-trial="1"] td.desc').childNodes[0].textContent,
        document.querySelector('tr[data-trial="1"] .changes').textContent]""")
    assert texts[:3] == [HOSTILE_KNOB, HOSTILE_KNOB, HOSTILE_TEXT]
    assert texts[3] == f"LR 0.01 -> 0.003, {HOSTILE_KNOB} ? -> 1"
    assert HOSTILE_KNOB in b.js("document.getElementById('importance-table').textContent")
    assert b.js("document.querySelectorAll('img, b, script:not([src])').length") == 0
    assert b.js("document.body.dataset.pwned === undefined") is True
    assert b.js("document.title") == "bilevel"


def test_deny_twin_the_same_text_parsed_as_markup_makes_elements(opened: Open) -> None:
    """The sensitivity twin: the strings the page shows are live markup (parsed, they make
    an img with a handler, a script and a b), so it is inserting them as text that keeps
    the page free of them."""
    made = opened.browser.js("""(() => {
        const t = document.createElement('template');
        t.innerHTML = document.querySelector('th[data-col^="knob:<"]').textContent +
          document.querySelector('tr[data-trial="1"] td.desc').childNodes[0].textContent;
        return [...t.content.querySelectorAll('img[onerror], script, b')].map(e => e.tagName);
      })()""")
    assert made == ["IMG", "SCRIPT", "B"]
