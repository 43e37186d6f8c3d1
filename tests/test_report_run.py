"""`bilevel report RUN` on a real store (SQLite and artifact files, written through the
store's own API) holding a run with hostile trial text, two far outliers and crashes:
the page lists every trial once, shows hostile text as text, marks the points it cannot
fit on the axis, keeps crashes off the value axis, colours diffs, and its counts agree
with the table. Parsed as a user reads it: the HTML's tables and text, and the DOM that
headless Chromium builds from it."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.analysis.curves import Point
from controller.analysis.plots import layout
from controller.research.settings import Budgets, RunSettings, TaskSettings
from controller.store.artifacts import ArtifactStore
from controller.store.mechanisms import MechanismLog, MechanismRow
from controller.store.records import RunState, TrialFinish, TrialStatus
from controller.store.runs import RunStore
from tests.test_cli_commands import bilevel

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = "<script>alert(1)</script> & <img src=x onerror=alert(2)> | pipe\nnew line"
HOSTILE_SOURCE = 'mechanism:<b onmouseover="x()">m</b>'
# (val_bpb, status, job_status, source, description) of trials 0..13
TRIALS: list[tuple[float | None, str, str, str, str]] = [
    (1.000, "keep", "ok", "baseline", "baseline"),
    (1.020, "discard", "ok", "proposer", HOSTILE),
    (0.980, "keep", "ok", "proposer", "lower lr"),
    (None, "crash", "over_budget", "proposer", "a slow candidate"),
    (5.000, "discard", "ok", "proposer", "diverged"),
    (1.010, "discard", "ok", "proposer", "depth 6"),
    (0.970, "keep", "ok", HOSTILE_SOURCE, "warmup"),
    (1.030, "discard", "ok", "proposer", "wider"),
    (None, "crash", "error", "proposer", "raises"),
    (9.000, "discard", "ok", "proposer", "exploded"),
    (1.005, "discard", "ok", "proposer", "tiny change"),
    (0.990, "discard", "ok", "proposer", "close"),
    (1.015, "discard", "ok", "proposer", "other"),
    (0.975, "discard", "ok", "proposer+filter", "near"),
]
RUN_ID = "run-0123456789ab"


def hostile_run(state: Path, run_id: str = RUN_ID,
                trials: list[tuple[float | None, str, str, str, str]] = TRIALS,
                objective: dict[str, str] | None = None) -> str:
    """A finished run in a real state dir, written the way the loop writes one;
    `objective` is what the server records for a task dir's metric."""
    store = RunStore(state / "bilevel.sqlite3")
    artifacts = ArtifactStore(state / "runs")
    settings = RunSettings(task=TaskSettings(preset="surrogate"),
                           budgets=Budgets(max_trials=len(trials) - 1)).to_dict()
    settings["task"].update(objective or {})
    store.create_run(run_id, settings)
    best = 1.0
    for i, (value, status, job, source, description) in enumerate(trials):
        train = f"DEPTH = {i}\nLR = {value}\n# {HOSTILE}\n"
        artifacts.write_trial(run_id, i, "train.py", train.encode())
        if i:
            artifacts.write_trial(run_id, i, "diff", (
                f"--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-DEPTH = 0\n+DEPTH = {i}\n"
                f"+# {HOSTILE}\n").encode())
        store.begin_trial(run_id, i, description, {})
        new_best = status == "keep" and value is not None and (i == 0 or value < best)
        best = value if new_best and value is not None else best
        store.finish_trial(run_id, TrialFinish(
            index=i, status=TrialStatus(status), val_bpb=value, memory_gb=0.5, metrics={},
            job_status=job, exception=None, seconds=1.5 + i, new_best=new_best,
            proposal_source=source), elapsed_seconds=2.0 * i)
    MechanismLog(store).put(run_id, MechanismRow("warmup", "library", "x = 1\n",
                                                 status="kept"))
    store.finish_run(run_id, RunState.SUCCEEDED, "trial budget", "done", {
        "state": "succeeded", "reason": "trial budget"})
    store.close()
    return run_id


class Page(HTMLParser):
    """Tables (by id) as rows of cell texts and row classes, and all visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self.ids: dict[str, str] = {}  # element id -> its text
        self.classes: list[str] = []  # class of every span
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._open: list[tuple[str, str]] = []  # (tag, id) with ids
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
            self.row_classes[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(a.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span":
            self.classes.append(a.get("class") or "")
        if a.get("id"):
            self._open.append((tag, a["id"] or ""))
            self.ids[a["id"] or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, ident in self._open:
            self.ids[ident] += data

    def body(self, table: str) -> list[list[str]]:
        return [r for r in self.tables[table] if r and r[0] != self.tables[table][0][0]]


def test_every_valued_point_is_on_the_axis_or_marked_and_crashes_are_apart() -> None:
    pts = [Point(i, v, s, d) for i, (v, s, _, _, d) in enumerate(TRIALS)]
    lay = layout(pts)
    assert lay.ylim is not None
    low, high = lay.ylim
    assert {p.index for p in lay.above} == {4, 9}  # the two far outliers
    assert {p.index for p in lay.crashed} == {3, 8}
    on_axis = lay.baseline + lay.kept + lay.discarded
    assert all(p.loss is not None and low <= p.loss <= high for p in on_axis)
    assert all(p.loss is not None and p.loss > high for p in lay.above)
    assert sum(lay.counts().values()) == len(TRIALS)  # each trial drawn exactly once
    nan = [*pts[:3], Point(3, float("nan"), "discard", "nan")]
    assert [p.index for p in layout(nan).crashed] == [3]  # no value: not a measurement
    few = layout([pts[0], pts[1], pts[2], pts[4], pts[5]])  # 5 values: nothing is cut
    assert few.above == [] and few.ylim is not None and few.ylim[1] > 5.0


def test_run_report_table_escaping_markers_and_counts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_id = hostile_run(state)
    done = bilevel("report", run_id, "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    text = (state / "reports" / run_id / "report.html").read_text()
    assert "<script" not in text and "<img src=x" not in text and "<b onmouseover" not in text
    page = Page(text)

    rows = page.body("trials")
    assert [r[0] for r in rows] == [str(i) for i in range(len(TRIALS))]
    assert page.tables["trials"][0][:7] == ["trial", "source", "description", "status",
                                            "val_bpb", "Δ vs baseline", "seconds"]
    assert rows[1][2] == HOSTILE and rows[6][1] == HOSTILE_SOURCE  # shown as text
    assert rows[3][3] == "crash (over_budget)" and rows[3][4] == "–"
    assert rows[2][5] == "-0.020000" and rows[4][5] == "+4.000000" and rows[13][6] == "14.5"
    classes = page.row_classes["trials"][1:]
    table_counts = {s: sum(s in c.split() for c in classes) for s in ("keep", "discard",
                                                                       "crash")}
    assert table_counts == {"keep": 3, "discard": 9, "crash": 2}

    counts = page.ids["counts"]  # the legend's counts, printed under the chart
    assert "14 finished trials: baseline 1, kept 2, discarded 7, crashed 2." in counts
    assert "2 discarded trial(s) lie above the axis" in counts  # 7 + 2 = the table's 9
    facts = dict((r[0], r[1]) for r in page.tables["facts"] if len(r) == 2)
    assert facts["kept / discarded / crashed (after the baseline)"] == "2 / 9 / 2"

    assert "add" in page.classes and "del" in page.classes and "hunk" in page.classes
    assert HOSTILE.splitlines()[0] in page.ids["diff"]  # the best diff, as text
    assert sum(1 for i in page.ids if i.startswith("trial-diff-") and
               not i.endswith("-body")) == len(TRIALS) - 1
    mech = page.body("mechanisms")
    assert mech[0][:3] == ["warmup", "library", "kept"]

    md = (state / "reports" / run_id / "report.md").read_text()
    md_rows = [line for line in md.split("## Trials")[1].split("## Mechanisms")[0]
               .splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert len(md_rows) == len(TRIALS)
    assert all(line.replace("\\|", "").count("|") == 8 for line in md_rows)
    # A Markdown viewer shows the hostile text as text, and a terminal reads it as is.
    import markdown_it

    shown = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<script>" not in shown.split("<pre>")[0] and "<img" not in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x" in shown
    assert "&lt;" not in md_rows[1] and "\\<script>" in md_rows[1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium")
def test_run_report_in_headless_chromium(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_id = hostile_run(state)
    assert bilevel("report", run_id, "--state-dir", str(state)).returncode == 0
    html_path = state / "reports" / run_id / "report.html"
    chromium = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run([*chromium, "--dump-dom", html_path.as_uri()], capture_output=True,
                         text=True, timeout=90, check=True).stdout
    page = Page(dom)
    assert len(page.body("trials")) == len(TRIALS)
    assert page.body("trials")[1][2] == HOSTILE
    assert "<script>" not in dom.split("<body>")[1] and 'src="x"' not in dom
    assert '<img id="progress"' in dom


def test_a_maximised_metric_is_shown_in_its_own_units_and_direction(tmp_path: Path) -> None:
    """The store holds the loss (-r2 for a maximised r2): the report shows r2, says
    higher is better, and marks the bad outliers (low r2) on the bottom edge."""
    state = tmp_path / "state"
    # r2 = 2 - TRIALS' value: the same search, as a metric to maximise (loss = -r2)
    trials = [(None if v is None else v - 2.0, s, j, src, d) for v, s, j, src, d in TRIALS]
    run_id = hostile_run(state, trials=trials, objective={"metric": "r2",
                                                          "direction": "maximize"})
    assert bilevel("report", run_id, "--state-dir", str(state)).returncode == 0
    page = Page((state / "reports" / run_id / "report.html").read_text())
    assert page.tables["trials"][0][4] == "r2"
    rows = page.body("trials")
    assert rows[2][4] == "1.020000" and rows[2][5] == "+0.020000"
    assert rows[4][4] == "-3.000000" and rows[4][5] == "-4.000000"
    facts = dict((r[0], r[1]) for r in page.tables["facts"] if len(r) == 2)
    assert facts["objective"] == "r2 (higher is better)"
    assert facts["best r2"] == "1.030000 (trial 6)"
    assert "lie below the axis: drawn as ▼ on its bottom edge" in page.ids["counts"]
