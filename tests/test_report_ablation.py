"""`bilevel report abl-…` on a real state dir (the store, the artifacts and the
ablation's folder, written through their own APIs): an arm whose every run equals
another arm's is named as identical, every Δ column says lower is better, each run's
mechanisms are listed with their status, and the figures are real PNGs."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from PIL import Image

from controller.analysis import ablation
from controller.analysis.ablation import AblationSpec, Cell, catalogue
from controller.store.mechanisms import MechanismLog, MechanismRow
from controller.store.runs import RunStore
from tests.test_cli_commands import bilevel
from tests.test_report_run import Page, hostile_run

REPEATS, TRIALS = 3, 4


def _trials(shift: float) -> list[tuple[float | None, str, str, str, str]]:
    return [(1.0, "keep", "ok", "baseline", "baseline"),
            (0.98 - shift, "keep", "ok", "proposer", "lower lr"),
            (1.01, "discard", "ok", "proposer", "wider"),
            (None, "crash", "error", "proposer", "raises"),
            (0.97 - shift, "keep", "ok", "proposer", "warmup")]


def _ablation(state: Path) -> str:
    arms, _ = catalogue(llm=False, schedule_batch=2)
    spec = AblationSpec(id="abl-20261202-a1b2c3", task="surrogate", repeats=REPEATS,
                        trials=TRIALS, arms=[arms["A"], arms["B"], arms["C-noop"]])
    for r in range(REPEATS):
        same = _trials(0.01 * r)  # A and B: the same search, trial for trial
        for arm, trials in (("A", same), ("B", same), ("C-noop", _trials(0.005 * r + 0.02))):
            run_id = hostile_run(state, f"run-{arm.lower().replace('-', '')}{r:08d}", trials)
            spec.cells[f"{arm}/{r}"] = Cell(run_id=run_id, state="succeeded")
            final = min(v for v, *_ in trials if v is not None)
            spec.reeval[f"{arm}/{r}"] = Cell(run_id=f"{run_id}-re", state="succeeded",
                                             value=final + 0.001, sigma=0.002)
            if arm == "C-noop":
                store = RunStore(state / "bilevel.sqlite3")
                MechanismLog(store).put(run_id, MechanismRow(
                    "noop", "initial", "pass\n", status="reverted" if r else "kept"))
                store.close()
        spec.reeval[f"baseline/{r}"] = Cell(run_id=f"run-base{r}", state="succeeded",
                                            value=1.0, sigma=0.002)
    ablation.save(state, spec)
    return spec.id


def test_ablation_report_names_identical_arms_one_direction_and_mechanism_status(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    ablation_id = _ablation(state)
    done = bilevel("report", ablation_id, "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    folder = state / "ablations" / ablation_id
    text = (folder / "report.html").read_text()
    page = Page(text)

    headers, *rows = page.tables["arms"]
    by_arm = {r[0].split(":")[0]: dict(zip(headers, r, strict=True)) for r in rows}
    assert list(by_arm) == ["A", "B", "C-noop"]
    assert [by_arm[a]["identical to"] for a in by_arm] == ["–", "A", "–"]
    assert "B = A" in page.ids["identical"]
    assert all(by_arm[a]["trials per run"] == str(TRIALS) for a in by_arm)
    assert all(by_arm[a]["runs"] == str(REPEATS) for a in by_arm)
    delta_columns = [h for h in headers if "Δ" in h]
    assert len(delta_columns) == 3 and all("↓" in h for h in delta_columns)
    assert delta_columns[0] == "Δval_bpb fresh seeds ↓ [95% t CI]"  # names the loss
    assert "lower is better" in page.ids["direction"]
    # C-noop's runs improved more: its area column is more negative (lower = better)
    area = next(h for h in headers if "over the budget" in h)
    assert float(by_arm["C-noop"][area].split()[0]) < float(by_arm["A"][area].split()[0]) < 0

    mech_headers, *mech = page.tables["mechanisms"]
    status = mech_headers.index("status")
    noop = [(r[1], r[status]) for r in mech if r[0] == "C-noop" and r[3] == "noop"]
    assert sorted(noop) == [("0", "kept"), ("1", "reverted"), ("2", "reverted")]
    assert all(r[status] not in ("", "–") for r in mech)
    assert len({r[2] for r in mech}) == 3 * REPEATS  # every run has its rows

    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 300
    md = (folder / "report.md").read_text()
    assert "**Identical arms: B = A." in md and "| B: L1 + L1.5" in md
