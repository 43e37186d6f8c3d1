"""The open page grows as trials finish: headless Chromium driven over the DevTools
protocol (a pipe, no port) watches `bilevel ui`'s page while a real run goes, held at a
known trial by the scripted fake LLM, so what the page shows mid-run is deterministic.
The LLM's hypotheses are live markup: the page shows them as text and runs none of it."""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.llm.settings import LLMAccess
from tests.fake_llm_server import FakeLLMServer, RecordedRequest, Reply
from tests.test_api_harness import Stubs, serving, surrogate_run
from tests.test_loop_harness import TEST_KEY, params_answer
from tests.test_ui import HOSTILE, _ui

pytestmark = pytest.mark.docker
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TRIALS = 5
HELD_AT = 3  # the proposal of this trial waits until the test lets it go


class Gate:
    """LLM answers; the one for trial HELD_AT waits for `release`."""

    def __init__(self) -> None:
        self.calls = itertools.count(1)
        self.release = threading.Event()

    def __call__(self, request: RecordedRequest) -> Reply:
        call = next(self.calls)
        if call == HELD_AT:
            self.release.wait(300)
        return Reply(params_answer({"MATRIX_LR": round(0.05 + 0.005 * call, 4)}, HOSTILE))


class Browser:
    """Headless Chromium over --remote-debugging-pipe: NUL-framed JSON on fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        commands_r, self.commands = os.pipe()
        self.replies, replies_w = os.pipe()
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w}', CHROMIUM,
             "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands_r, replies_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self.buffer = b""
        self.ids = itertools.count(1)
        self.session = ""

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        call = next(self.ids)
        message: dict[str, Any] = {"id": call, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == call:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            poller = select.poll()  # select() refuses descriptors past 1024
            poller.register(self.replies, select.POLLIN)
            ready = poller.poll(60_000)
            assert ready, "Chromium did not answer within 60 s"
            chunk = os.read(self.replies, 1 << 16)
            assert chunk, "Chromium closed its pipe"
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        value: dict[str, Any] = json.loads(message)
        return value

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        return result["result"].get("value")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        os.close(self.commands)
        os.close(self.replies)


@contextmanager
def _browser(profile: Path) -> Iterator[Browser]:
    browser = Browser(profile)
    try:
        yield browser
    finally:
        browser.close()


def _until(browser: Browser, check: Callable[[], bool], what: str,
           seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            shown = browser.js("document.body.innerText")
            raise AssertionError(f"the page never showed {what}; it shows:\n{shown}")
        time.sleep(0.2)


ROWS = "document.querySelectorAll('#trials-table tr.trial.done').length"
DOTS = "document.querySelectorAll('#plot circle').length"


def test_the_open_page_grows_as_trials_finish(tmp_path: Path, sandbox_image: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    gate = Gate()
    (tmp_path / "client").mkdir()
    with FakeLLMServer(responder=gate) as llm, \
            serving(tmp_path / "controller", sandbox_image,
                    llm=LLMAccess(allowed_base_urls=(llm.openai_url,))) as server, \
            _ui(server.address, tmp_path / "client", None) as page, \
            _browser(tmp_path / "chromium") as browser:
        try:
            request = surrogate_run(trials=TRIALS)
            request.proposer.kind = rpb.PROPOSER_KIND_LLM
            request.llm.provider, request.llm.base_url = "openai", llm.openai_url
            request.llm.model = "fake-model"
            run = Stubs(server.address).runs.CreateRun(request, timeout=30)
            browser.open(page.route(f"/run/{run.id}"))
            # Held: the baseline and the trials before the held proposal, nothing more.
            _until(browser, lambda: browser.js(ROWS) == HELD_AT, f"{HELD_AT} finished trials")
            assert browser.js(DOTS) == HELD_AT
            assert "running" in browser.js("document.getElementById('facts').textContent")
            gate.release.set()
            _until(browser, lambda: browser.js(ROWS) == TRIALS + 1, f"{TRIALS + 1} finished trials")
            _until(browser, lambda: "succeeded" in browser.js(
                "document.getElementById('facts').textContent"), "the run succeeded")
            assert browser.js(DOTS) == TRIALS + 1
            assert browser.js("document.querySelectorAll('#plot path.best').length") == 1
            # The description is the hostile text, which is live markup (parsed, it makes
            # an element), yet the page holds no such element and ran none of it.
            description = "document.querySelector('tr[data-trial=\"1\"] td.desc').textContent"
            assert HOSTILE in browser.js(description)
            assert browser.js(f"(() => {{ const t = document.createElement('template'); "
                              f"t.innerHTML = {description}; "
                              f"return t.content.querySelectorAll('img, script').length; }})()"
                              ) == 2
            assert browser.js("document.querySelectorAll('img, script:not([src])').length") == 0
            assert browser.js("document.title") == "bilevel"
            assert browser.js("document.body.dataset.pwned === undefined") is True
        finally:
            gate.release.set()
