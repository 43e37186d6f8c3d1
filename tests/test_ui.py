"""`bilevel ui` end to end: a real controller on a loopback socket with a bearer token,
a real run of the surrogate task whose LLM proposer (the scripted fake server, through
the OpenAI SDK) writes hostile hypotheses, a real `bilevel ui --server` subprocess, and
the page loaded in headless Chromium after its script ran."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from controller.analysis import ablation
from controller.analysis.ablation import AblationSpec, Cell
from controller.api.client import Client, ClientConfig
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.holder import holder_of
from controller.llm.settings import LLMAccess
from controller.ui import backend
from controller.ui.web import KEY_HEADER
from tests.fake_llm_server import FakeLLMServer, RecordedRequest, Reply
from tests.test_api_harness import Stubs, serving, surrogate_run
from tests.test_loop_harness import TEST_KEY, params_answer

pytestmark = pytest.mark.docker
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "ui-test-token-0123456789abcdef"
TRIALS = 4
# Would run if the page built markup from trial text: an element, a handler, a script.
HOSTILE = ('<img src=x onerror="document.body.dataset.pwned=1">'
           '<script>document.title="pwned"</script>&amp;')


def _hostile_answers() -> Callable[[RecordedRequest], Reply]:
    counter = itertools.count()

    def answer(request: RecordedRequest) -> Reply:
        lr = round(0.05 + 0.005 * next(counter), 4)  # never the baseline 0.04
        return Reply(params_answer({"MATRIX_LR": lr}, HOSTILE))

    return answer


@dataclass(frozen=True)
class Page:
    """A running `bilevel ui`: its base URL and the key its printed URL carries."""

    base: str
    key: str

    def api(self, path: str) -> str:
        return f"{self.base}api/{path}"

    def route(self, route: str = "/") -> str:
        """The URL a browser opens: the key and the page's route in the fragment."""
        return f"{self.base}#key={self.key}{route}"


@contextmanager
def _ui(server: str | None, state_dir: Path, token_file: Path | None,
        says: str = "") -> Iterator[Page]:
    """`bilevel ui` as a user starts it (without --server when `server` is None); yields
    the page it printed, stops it with SIGTERM; `says`: expected on its stderr."""
    port_file = state_dir.parent / f"{state_dir.name}.ui-port"
    port_file.unlink(missing_ok=True)
    extra = ["--token-file", str(token_file)] if token_file is not None else []
    extra += ["--server", server] if server is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "--log-level", "warning", "ui", "--port",
         "0", "--port-file", str(port_file), "--state-dir", str(state_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = ""
    try:
        deadline = time.monotonic() + 90
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "bilevel ui never wrote its port"
            time.sleep(0.1)
        assert proc.stdout is not None
        printed = proc.stdout.readline()  # printed before the port file is written
        found = re.search(r"ui: (http://127\.0\.0\.1:(\d+)/)#key=([\w-]+) ", printed)
        assert found is not None and found[2] == port_file.read_text().strip(), printed
        yield Page(found[1], found[3])
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "ui: http://127.0.0.1:" in printed + out and says in err


def _get(url: str, key: str | None) -> tuple[int, Any]:
    """GET as the page's script does: with the key (None: without one)."""
    request = urllib.request.Request(url, headers={KEY_HEADER: key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _chromium(tmp_path: Path, *flags: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'chromium'}",
                           "--virtual-time-budget=15000", *flags], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@dataclass
class Live:
    stubs: Stubs
    address: str
    page: Page  # the ui's
    llm: FakeLLMServer
    client_state: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str) -> Iterator[Live]:
    """One token-protected controller and one `bilevel ui --server` for the module."""
    tmp = tmp_path_factory.mktemp("ui")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    client_state = tmp / "client"
    client_state.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", TEST_KEY)  # read by the controller in this process
        with FakeLLMServer(responder=_hostile_answers()) as llm, \
                serving(tmp / "controller", sandbox_image, tokens=(TOKEN,),
                        llm=LLMAccess(allowed_base_urls=(llm.openai_url,))) as server, \
                _ui(server.address, client_state, token_file) as page:
            yield Live(Stubs(server.address, TOKEN), server.address, page, llm, client_state)


def _follow(page: Page, run_id: str) -> tuple[list[dict[str, Any]], int]:
    """The run's events through the page's long poll until the run ends, and the polls."""
    events: list[dict[str, Any]] = []
    polls = 0
    while True:
        status, got = _get(page.api(f"runs/{run_id}/events?after="
                                    f"{events[-1]['seq'] if events else 0}&wait=20"), page.key)
        assert status == 200, got
        polls += 1
        events.extend(got["events"])
        if got["done"]:
            return events, polls


def test_ui_follows_a_live_run_and_the_page_shows_every_trial_escaped(
        live: Live, tmp_path: Path) -> None:
    request = surrogate_run(trials=TRIALS)
    request.proposer.kind = rpb.PROPOSER_KIND_LLM
    request.llm.provider, request.llm.base_url = "openai", live.llm.openai_url
    request.llm.model = "fake-model"
    run = live.stubs.runs.CreateRun(request, metadata=live.stubs.metadata, timeout=30)

    # Live: the page's long poll, followed while the run goes, misses nothing.
    events, polls = _follow(live.page, run.id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum("trial_finished" in e for e in events) == TRIALS + 1
    assert "run_finished" in events[-1] and polls >= 2  # updates came as it went
    status, listed = _get(live.page.api("runs"), live.page.key)
    assert status == 200 and run.id in [r["id"] for r in listed["runs"]]
    status, refused = _get(live.page.api("runs"), None)  # another user of this host
    assert status == 403 and "open the URL it printed" in refused["error"]

    dom = _chromium(tmp_path, "--dump-dom", live.page.route(f"/run/{run.id}"))
    rows = re.findall(r'<tr class="trial done[^"]*" data-trial="(\d+)"', dom)
    assert rows == [str(n) for n in range(TRIALS + 1)]
    plot = dom.split('<svg id="plot"')[1].split("</svg>")[0]
    assert plot.count("<circle") == TRIALS + 1 and 'class="best"' in plot
    # The hostile hypothesis is text in each proposed trial's row, never markup.
    table = dom.split('<table id="trials-table">')[1].split("</table>")[0]
    assert table.count("&lt;img src=x onerror=") == TRIALS
    assert table.count("&lt;script&gt;document.title") == TRIALS
    assert "&amp;amp;" in table
    title = dom.split("<title>")[1].split("</title>")[0]
    assert "<img" not in dom and "<script>" not in dom and "data-pwned" not in dom
    assert title == "bilevel"

    shot = tmp_path / "ui.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,1400",
              live.page.route(f"/run/{run.id}"))
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn, not a blank page


def test_ui_shows_mechanisms_levels_a_trial_and_an_ablation(live: Live, tmp_path: Path) -> None:
    request = surrogate_run(trials=8)
    request.outer.CopyFrom(rpb.OuterSettings(
        levels=[rpb.LEVEL_1, rpb.LEVEL_1_5, rpb.LEVEL_2], mechanism_source="library",
        l15_every_trials=3, l2_every_trials=3, mechanisms=[rpb.InitialMechanism(name="tabu")]))
    run = live.stubs.runs.CreateRun(request, metadata=live.stubs.metadata, timeout=30)
    events, _ = _follow(live.page, run.id)
    final = live.stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id),
                                   metadata=live.stubs.metadata)
    lifecycle = [e["mechanism"] for e in events if "mechanism" in e]
    assert lifecycle and final.mechanisms

    def artifact(n: int, name: str) -> bytes:
        found = live.stubs.runs.GetArtifact(rpb.GetArtifactRequest(
            run_id=run.id, name=f"trials/{n}/{name}"), metadata=live.stubs.metadata)
        return bytes(found.content)

    # A trial that changed train.py and trained (a portfolio arm's point may crash).
    trial = next(n for n in range(1, 9)
                 if artifact(n, "diff") and b"val_bpb:" in artifact(n, "log"))
    dom = _chromium(tmp_path, "--dump-dom", live.page.route(f"/run/{run.id}/trial/{trial}"))
    timeline = dom.split('<svg id="timeline"')[1].split("</svg>")[0]
    assert timeline.count("<circle") == len(lifecycle)
    verdicts = dom.split('<table id="verdicts">')[1].split("</table>")[0]
    assert verdicts.count("<tr>") == len(final.mechanisms) + 1  # and the header
    assert "<td>tabu</td>" in verdicts
    assert '<table id="config-table">' in dom
    # The deep link opened the trial: its diff, coloured, and its log.
    diff = dom.split('<pre id="diff">')[1].split("</pre>")[0]
    assert '<span class="add">+' in diff and '<span class="del">-' in diff
    assert "val_bpb:" in dom.split('<pre id="log">')[1].split("</pre>")[0]

    ablation.save(live.client_state, AblationSpec(
        id="abl-ui-test", task="surrogate", repeats=1, trials=8,
        arms=[ablation.catalogue(False, 2)[0]["C"]],
        cells={"C/0": Cell(run_id=run.id, state="succeeded")}))
    home = _chromium(tmp_path, "--dump-dom", live.page.route())
    runs = home.split('<table id="runs-table">')[1].split("</table>")[0]
    assert f'href="#/run/{run.id}">{run.id}</a>' in runs and "<td>1+1.5+2</td>" in runs
    assert 'href="#/ablation/abl-ui-test">abl-ui-test</a>' in home.split(
        '<table id="ablations-table">')[1]
    shown = _chromium(tmp_path, "--dump-dom", live.page.route("/ablation/abl-ui-test"))
    arms = shown.split('<table id="arms-table">')[1].split("</table>")[0]
    assert f'href="#/run/{run.id}">{final.best_loss:.4f}</a>' in arms

    # Without the token the controller refuses the ui, and the page is told why.
    (tmp_path / "other").mkdir()
    with _ui(live.address, tmp_path / "other", None) as anonymous:
        status, body = _get(anonymous.api("runs"), anonymous.key)
        assert status == 502 and "UNAUTHENTICATED" in body["error"]


def test_events_come_in_capped_pages_that_join_up_exactly(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    run = live.stubs.runs.CreateRun(surrogate_run(trials=2), metadata=live.stubs.metadata,
                                    timeout=30)
    every = list(live.stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id),
                                          metadata=live.stubs.metadata, timeout=120))
    monkeypatch.setattr(backend, "MAX_EVENTS", 3)

    async def pages() -> list[dict[str, Any]]:
        async with Client(ClientConfig(address=live.address, token=TOKEN)) as client:
            ui = backend.Backend(client, None)
            got: list[dict[str, Any]] = []
            after = 0
            while True:
                page = await ui.events(run.id, after, 0)
                got.append(page)
                after = page["last_seq"]
                if page["done"]:
                    return got

    got = asyncio.run(pages())
    assert [e["seq"] for p in got for e in p["events"]] == [e.seq for e in every]
    assert all(len(p["events"]) == 3 and p["more"] for p in got[:-2])
    assert got[-1]["done"] and not got[-1]["more"]


def test_without_server_the_ui_follows_the_holder_then_reads_the_store(
        tmp_path: Path, sandbox_image: str) -> None:
    state = tmp_path / "state"
    with serving(state, sandbox_image) as server:
        stubs = Stubs(server.address)
        run = stubs.runs.CreateRun(surrogate_run(trials=2), timeout=30)
        with _ui(None, state, None, says="connected to the controller holding") as page:
            live, _ = _follow(page, run.id)
    assert "run_finished" in live[-1]
    # No controller now: the store is read directly and no controller is started.
    with _ui(None, state, None) as page:
        status, listed = _get(page.api("runs"), page.key)
        assert status == 200 and [r["id"] for r in listed["runs"]] == [run.id]
        assert listed["runs"][0]["state"] == "RUN_STATE_SUCCEEDED"
        stored, polls = _follow(page, run.id)
        assert stored == live and polls == 1
        status, diff = _get(page.api(f"runs/{run.id}/artifact?name=trials/1/diff"), page.key)
        assert status == 200 and diff["text"].startswith("--- a/train.py")
        assert holder_of(state) is None  # the view started no controller
