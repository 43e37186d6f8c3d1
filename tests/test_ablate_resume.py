"""`bilevel ablate` end to end: a real CLI subprocess with its in-process controller,
real sandbox containers and the scripted fake LLM behind the OpenAI API. SIGKILLed
mid-ablation and restarted with --resume, it completes without redoing any finished
repeat, re-evaluates every final best on fresh seeds, and writes its report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.store.runs import RunStore
from tests.fake_llm_server import FakeLLMServer
from tests.test_loop_harness import TEST_KEY, random_params_responder

pytestmark = pytest.mark.docker
ENV = {**os.environ, "OPENAI_API_KEY": TEST_KEY}


def _spec(state: Path) -> dict[str, object]:
    paths = list((state / "ablations").glob("*/ablation.json"))
    if not paths:
        return {}
    try:
        raw: dict[str, object] = json.loads(paths[0].read_text())
    except json.JSONDecodeError:
        return {}
    return raw


def _finished(spec: dict[str, object]) -> dict[str, str]:
    cells = spec.get("cells", {})
    assert isinstance(cells, dict)
    return {k: c["run_id"] for k, c in cells.items() if c["state"] == "succeeded"}


def test_ablation_survives_a_sigkill_and_resumes_without_redoing_finished_repeats(
        tmp_path: Path, sandbox_image: str) -> None:
    with FakeLLMServer(responder=random_params_responder()) as fake:
        args = [sys.executable, "-m", "controller.cli", "--log-level", "warning", "ablate",
                "--arms", "A,random_search", "--repeats", "3", "--trials", "4", "--parallel", "2",
                "--provider", "openai", "--model", "fake-chat", "--base-url", fake.openai_url,
                "--state-dir", str(tmp_path), "--image", sandbox_image,
                "--namespace", "pytest-ablate"]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=ENV, start_new_session=True)
        deadline = time.monotonic() + 120
        while len(_finished(_spec(tmp_path))) < 2 and first.poll() is None:
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its in-process controller
        first.wait(30)
        spec = _spec(tmp_path)
        before = _finished(spec)
        assert 2 <= len(before) < 6, "the kill should land mid-ablation"
        store = RunStore(tmp_path / "bilevel.sqlite3")
        trials_before = {run_id: store.get_run(run_id).trials_done
                         for run_id in before.values()}
        store.close()

        second = subprocess.run([*args, "--resume", str(spec["id"])], capture_output=True,
                                text=True, timeout=240, env=ENV)
        assert second.returncode == 0, second.stderr
        assert f"{len(before)} of 6 runs already finished; not redone" in second.stderr

    after = _spec(tmp_path)
    finished = _finished(after)
    assert len(finished) == 6
    assert after["principal"] == "local"  # the in-process controller's own user
    assert {k: finished[k] for k in before} == before  # the same runs, not redone
    seeds = {a["name"]: a for a in after["arms"]}  # type: ignore[attr-defined]
    assert set(seeds) == {"A", "random_search"}
    store = RunStore(tmp_path / "bilevel.sqlite3")
    try:
        for run_id, done in trials_before.items():
            assert store.get_run(run_id).trials_done == done
        search_seeds = {store.get_run(finished[f"A/{r}"]).settings["search"]["seed"]
                        for r in range(3)}
        assert len(search_seeds) == 3  # distinct, recorded seeds
        assert store.get_run(finished["A/0"]).llm_tokens_used > 0
        assert store.get_run(finished["random_search/0"]).llm_tokens_used == 0
        assert {store.get_run(run_id).owner for run_id in finished.values()} == {"local"}
    finally:
        store.close()
    reeval = after["reeval"]
    assert isinstance(reeval, dict)
    assert all(reeval[f"{arm}/{r}"]["value"] is not None
               for arm in ("A", "random_search", "baseline") for r in range(3))
    report = (tmp_path / "ablations" / str(after["id"]) / "report.md").read_text()
    assert "| A: L1 |" in report and "| random_search: control" in report
    assert "test bed for the search machinery" in report
