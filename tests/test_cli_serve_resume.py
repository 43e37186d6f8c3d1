"""`bilevel serve` as a real subprocess: SIGKILL it mid-run, restart it, and the run
completes with no lost or duplicated trial and no leftover container."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands.holder import holder_of
from tests.test_api_harness import Stubs, leftover_containers, surrogate_run, wait_for_engine

pytestmark = pytest.mark.docker


@contextmanager
def bilevel_serve(state_dir: Path, image: str, namespace: str,
                  env: dict[str, str] | None = None) -> Iterator[
        tuple[subprocess.Popen[bytes], str]]:
    """`bilevel serve` on `state_dir`, and the address a client uses: a loopback port
    where `env` gives it a token (BILEVEL_TOKEN), else its private Unix socket (the
    one its lock file names)."""
    port_file = state_dir / f"port-{time.monotonic_ns()}"
    tcp = ["--listen", "127.0.0.1:0"] if (env or {}).get("BILEVEL_TOKEN") else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "--log-format", "json", "serve", *tcp,
         "--port-file", str(port_file), "--state-dir",
         str(state_dir), "--image", image, "--namespace", namespace],
        stdout=subprocess.DEVNULL, stderr=open(state_dir / "serve.log", "ab"),  # noqa: SIM115
        env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, (state_dir / "serve.log").read_text()
            assert time.monotonic() < deadline, "bilevel serve did not start"
            time.sleep(0.05)
        port = int(port_file.read_text())
        holder = holder_of(state_dir)
        assert holder is not None and holder.address.startswith("unix:"), holder
        yield proc, f"127.0.0.1:{port}" if port else holder.address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def test_sigkill_mid_run_then_restart_completes_the_run_exactly_once(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient) -> None:
    namespace = f"pytest-resume-{os.getpid()}"
    trials = 14
    seen: list[rpb.RunEvent] = []
    with bilevel_serve(tmp_path, sandbox_image, namespace) as (proc, address):
        stubs = Stubs(address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(surrogate_run(trials=trials), timeout=30)
        for event in stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=60):
            seen.append(event)
            if event.HasField("trial_started") and event.trial_started.trial >= 4:
                break
        time.sleep(0.15)  # let the trial's container start
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    killed_best = [e.new_best.loss for e in seen if e.HasField("new_best")][-1]

    with bilevel_serve(tmp_path, sandbox_image, namespace) as (_, address):
        stubs = Stubs(address)
        wait_for_engine(stubs)  # the new controller reaped the orphans and resumed the run
        after = list(stubs.runs.WatchRun(
            rpb.WatchRunRequest(run_id=run.id, after_seq=seen[-1].seq), timeout=120))
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        tsv = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run.id, name="results.tsv"))
        everything = list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=60))

    assert final.state == rpb.RUN_STATE_SUCCEEDED, final
    assert final.trials_done == trials + 1
    assert [e.seq for e in seen + after] == [e.seq for e in everything]
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    finished = Counter(e.trial_finished.trial for e in everything
                       if e.HasField("trial_finished"))
    assert finished == Counter(range(trials + 1)), "a trial was lost or counted twice"
    rows = [line.split("\t")[0] for line in tsv.content.decode().splitlines()[1:]]
    assert len(rows) == trials + 1  # one row per trial: none lost, none twice
    assert all(len(commit) == 7 for commit in rows)  # train.py's git blob hash
    resumed = [e.run_started for e in after if e.HasField("run_started")]
    assert resumed and resumed[0].resumed
    # The trial the kill interrupted ran again under its own index, as attempt 2.
    rerun = next(e.trial_started for e in after if e.HasField("trial_started"))
    assert (rerun.trial, rerun.attempt) == (resumed[0].next_trial, 2)
    # The resumed loop continued from the incumbent: keeps only ever lower the best.
    bests = [e.new_best for e in everything if e.HasField("new_best")]
    assert all(b.loss < b.previous_loss for b in bests[1:])
    first_after = next((e.new_best for e in after if e.HasField("new_best")), None)
    if first_after is not None:
        assert first_after.previous_loss == killed_best
    assert leftover_containers(docker_client, namespace) == []
