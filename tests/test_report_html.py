"""`bilevel report` on a real ablation and a real run: the HTML page loads in headless
Chromium, its figures are inline PNGs that decode, the arms table lists every arm, and
the surrogate task is labelled as a test bed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.test_cli_commands import bilevel

pytestmark = pytest.mark.docker
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _dom(page: Path, tmp_path: Path) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_ablation_and_run_reports_render_in_headless_chromium(tmp_path: Path,
                                                             sandbox_image: str) -> None:
    state = tmp_path / "state"
    local = ("--state-dir", str(state), "--image", sandbox_image, "--namespace",
             "pytest-report")
    done = bilevel("ablate", "--arms", "A,C-noop", "--repeats", "2", "--trials", "4", *local)
    assert done.returncode == 0, done.stderr
    ablation_id = done.stdout.strip().splitlines()[-1]
    assert ablation_id.startswith("abl-")

    out = tmp_path / "report"
    report = bilevel("report", ablation_id, "--out", str(out), "--state-dir", str(state))
    assert report.returncode == 0, report.stderr
    page = out / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 300
    dom = _dom(page, tmp_path)
    assert '<img id="curves"' in dom and 'src="data:image/png;base64,' in dom
    assert '<img id="progress"' in dom
    table = dom.split('<table id="arms">')[1].split("</table>")[0]
    assert "<td>A: L1" in table and "<td>C-noop: control" in table
    assert 'id="testbed"' in dom and "not evidence about real training" in dom
    assert "| C-noop: control" in (out / "report.md").read_text()
    # The no-op mechanism changes nothing and L1.5 (every 5 trials) never acts in 4, so
    # C-noop's runs repeat A's trial for trial: the report must say so.
    assert "C-noop = A" in dom.split('id="identical">')[1].split("</p>")[0]

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}",
                    "--window-size=1100,2400", page.as_uri()], capture_output=True,
                   timeout=90, check=True)
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn, not a blank page

    run_id = re.search(r"run-[0-9a-f]{12}", (out / "report.md").read_text())
    assert run_id is not None
    single = bilevel("report", run_id.group(0), "--state-dir", str(state))
    assert single.returncode == 0, single.stderr
    run_page = state / "reports" / run_id.group(0) / "report.html"
    run_dom = _dom(run_page, tmp_path)
    assert '<img id="progress"' in run_dom and '<table id="facts">' in run_dom
    assert 'id="diff"' in run_dom and '<table id="trials">' in run_dom
