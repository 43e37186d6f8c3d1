"""A task directory over gRPC CreateRun: sent as bytes, checked like Execute files,
stored with the run, and the only task a resumed run sees. Real server on a loopback
socket, real store, real engine for the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.store import task_bundle
from controller.store.task_bundle import BundleError, read_task_dir
from tests.test_api_harness import Stubs, field_violations, serving, wait_for_engine

MANIFEST = """\
name = "api-test-task"
editable = "train.py"
metric = "loss"
direction = "minimize"
description = "Move X towards the hidden target."

[train]
command = ["python3", "train.py"]
wall_seconds = 60
outputs = "out"

[score]
command = ["python3", "score.py"]
mounts = {"data/eval" = "/data/eval"}
wall_seconds = 60

[knobs]
X = {low = -4.0, high = 4.0}
"""


def write_task(root: Path, scorer_version: int = 1) -> Path:
    """A tiny two-phase task: phase 1 writes X, the trusted scorer compares it with a
    target only it can read and says which scorer it is."""
    (root / "data" / "eval").mkdir(parents=True)
    (root / "bilevel-task.toml").write_text(MANIFEST)
    (root / "train.py").write_text(textwrap.dedent("""\
        import json
        import os

        X = 2.0

        os.makedirs("out", exist_ok=True)
        with open("out/x.json", "w") as f:
            json.dump({"x": X}, f)
    """))
    (root / "data" / "eval" / "target.txt").write_text("0.5\n")
    set_scorer(root, scorer_version)
    return root


def set_scorer(root: Path, version: int) -> None:
    (root / "score.py").write_text(textwrap.dedent(f"""\
        import json
        x = json.load(open("out/x.json"))["x"]
        target = float(open("/data/eval/target.txt").read())
        print(json.dumps({{"loss": (x - target) ** 2, "scorer_version": {version}}}))
    """))


def task_request(files: dict[str, bytes], trials: int = 8) -> rpb.CreateRunRequest:
    return rpb.CreateRunRequest(task=rpb.TaskSpec(task_files=files),
                                search=rpb.SearchSettings(seed=3),
                                budgets=rpb.Budgets(max_trials=trials))


def invalid(stubs: Stubs, request: rpb.CreateRunRequest) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as err:
        stubs.runs.CreateRun(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return field_violations(err.value)


# The client's side: what a directory becomes.


def test_read_task_dir_sends_every_file_but_caches_and_refuses_symlinks(tmp_path: Path) -> None:
    root = write_task(tmp_path / "task")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    files = read_task_dir(root)
    assert sorted(files) == ["bilevel-task.toml", "data/eval/target.txt", "score.py",
                             "train.py"]
    assert files["data/eval/target.txt"] == b"0.5\n"  # data folders travel too
    (root / "link.py").symlink_to(root / "train.py")
    with pytest.raises(BundleError, match=r"link\.py is a symlink"):
        read_task_dir(root)


# The server's side: bad bundles, refused before anything is stored or run.


def test_bad_bundles_rejected_naming_the_file_and_nothing_stored(tmp_path: Path) -> None:
    good = read_task_dir(write_task(tmp_path / "task"))
    state = tmp_path / "state"
    # No engine: every check here happens before a container could run.
    with serving(state, None, docker_url="unix:///nonexistent/docker.sock") as server:
        stubs = Stubs(server.address)
        cases = {
            "../evil.py": "task.task_files['../evil.py']",
            "/etc/cron.d/evil": "task.task_files['/etc/cron.d/evil']",
            "data/../../evil.py": "task.task_files['data/../../evil.py']",
            "./train.py": "task.task_files['./train.py']",
        }
        for path, field in cases.items():
            violations = invalid(stubs, task_request({**good, path: b"x"}))
            assert field in violations, (path, violations)
        # A file where another file needs a folder.
        violations = invalid(stubs, task_request({**good, "data": b"x"}))
        assert "task.task_files['data']" in violations
        # Over the caps: file count, then bytes (data folders included).
        many = {**good, **{f"data/eval/f{i}": b"" for i in range(task_bundle.MAX_BUNDLE_FILES)}}
        assert "10004 files" in invalid(stubs, task_request(many))["task.task_files"]
        big = {**good, "data/eval/big.bin": b"\0" * task_bundle.MAX_BUNDLE_BYTES}
        assert "over the cap" in invalid(stubs, task_request(big))["task.task_files"]
        # A bundle the task loader refuses: the manifest key is named.
        bad_manifest = {**good, "bilevel-task.toml": MANIFEST.replace(
            '"data/eval" = "/data/eval"', '"../state" = "/data/eval"').encode()}
        violations = invalid(stubs, task_request(bad_manifest))
        assert any(f.startswith("task.task_files[bilevel-task.toml].score.mounts")
                   for f in violations), violations
        unknown = {**good, "bilevel-task.toml": ("surprise = 1\n" + MANIFEST).encode()}
        assert "task.task_files[bilevel-task.toml].surprise" in invalid(
            stubs, task_request(unknown))
    runs = state / "runs"
    leftovers = list(runs.rglob("*")) if runs.exists() else []
    assert [p for p in leftovers if p.is_file()] == [], "a refused bundle was kept"


# A run of a sent task, and its resume after a restart.


def finished_trials(stubs: Stubs, run_id: str) -> list[rpb.RunEvent.TrialFinished]:
    events = stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id), timeout=300)
    return [e.trial_finished for e in events if e.HasField("trial_finished")]


@pytest.mark.docker
def test_task_run_over_grpc_resumes_with_the_stored_copy_only(
        tmp_path: Path, sandbox_image: str) -> None:
    root = write_task(tmp_path / "task", scorer_version=1)
    state = tmp_path / "state"
    files = read_task_dir(root)
    with serving(state, sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(task_request(files), timeout=120)
        # Identical tasks share one stored copy: the second run's task differs by a file.
        tampered = stubs.runs.CreateRun(task_request({**files, "NOTES.md": b"copy 2\n"}),
                                        timeout=120)
        assert run.request.task.task_sha256 == task_bundle.digest(files)
        assert run.request.task.preset == "api-test-task"
        assert not run.request.task.task_files  # stored, not echoed
        # The hash is the server's to set: a client naming one gets no stored task.
        spoof = stubs.runs.CreateRun(rpb.CreateRunRequest(
            task=rpb.TaskSpec(preset="surrogate", task_sha256=run.request.task.task_sha256),
            budgets=rpb.Budgets(max_trials=1)), timeout=120)
        assert spoof.request.task.task_sha256 == ""
        assert spoof.request.task.preset == "surrogate"
        for run_id in (run.id, tampered.id):  # let each get going, then stop the server
            events = stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id), timeout=120)
            next(e for e in events if e.HasField("trial_finished"))
            events.cancel()
    stored = task_bundle.task_dir(state / "runs", run.id)
    assert read_task_dir(stored) == files

    # The user edits the task directory after submitting: a new scorer, another X.
    set_scorer(root, 2)
    (root / "train.py").write_text((root / "train.py").read_text().replace("X = 2.0", "X = 0.5"))
    # And someone edits the second run's stored copy: that run must not resume on it.
    victim = task_bundle.task_dir(state / "runs", tampered.id) / "score.py"
    victim.chmod(0o644)
    victim.write_text(victim.read_text().replace('"scorer_version": 1', '"scorer_version": 9'))

    with serving(state, sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        trials = finished_trials(stubs, run.id)
        final = stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id))
        broken = stubs.runs.GetRun(rpb.GetRunRequest(run_id=tampered.id))
        resumed = [e.run_started for e in stubs.runs.WatchRun(
            rpb.WatchRunRequest(run_id=run.id), timeout=60) if e.HasField("run_started")]

    assert final.state == rpb.RUN_STATE_SUCCEEDED, final.stop_reason
    assert any(r.resumed for r in resumed), "the run was not resumed after the restart"
    assert len(trials) == 9
    # Every trial, before and after the restart, was scored by the scorer that was sent,
    # and the baseline is the X that was sent.
    assert {json.loads(t.metrics_json)["scorer_version"] for t in trials} == {1}
    baseline = next(t for t in trials if t.trial == 0)
    assert json.loads(baseline.metrics_json)["loss"] == pytest.approx((2.0 - 0.5) ** 2)
    assert broken.state == rpb.RUN_STATE_FAILED
    assert "stored task changed" in broken.stop_reason
    assert os.stat(stored / "score.py").st_mode & 0o222 == 0  # stored read-only


@pytest.mark.docker
def test_cli_run_server_task_dir_sends_it(tmp_path: Path, sandbox_image: str) -> None:
    """`bilevel run --server ADDR --task DIR`: the directory goes over the wire; a bad
    manifest is refused before anything is sent, naming its key."""
    root = write_task(tmp_path / "task")
    with serving(tmp_path / "state", sandbox_image) as server:
        wait_for_engine(Stubs(server.address))
        cmd = [sys.executable, "-m", "controller.cli", "run", "--server", server.address,
               "--task", str(root), "--trials", "2", "--seed", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "BILEVEL_TOKEN": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        (run,) = Stubs(server.address).runs.ListRuns(rpb.ListRunsRequest()).runs
        run_id = run.id
        assert f"{run_id}: succeeded" in done.stdout
        assert run.request.task.task_sha256 == task_bundle.digest(read_task_dir(root))
        assert run.state == rpb.RUN_STATE_SUCCEEDED and run.trials_done == 3
        # The stored task is readable back, file by file, and only inside its folder.
        stubs = Stubs(server.address)
        sent = stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run_id,
                                                             name="task/score.py"))
        assert sent.content == (root / "score.py").read_bytes()
        for name in ("task/../../bilevel.sqlite3", "task//etc/passwd", "task/"):
            with pytest.raises(grpc.RpcError) as err:
                stubs.runs.GetArtifact(rpb.GetArtifactRequest(run_id=run_id, name=name))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name

        (root / "bilevel-task.toml").write_text(MANIFEST.replace('"minimize"', '"lower"'))
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "BILEVEL_TOKEN": ""})
        assert bad.returncode == 2 and "direction" in bad.stderr, bad.stderr
        assert len(list(Stubs(server.address).runs.ListRuns(rpb.ListRunsRequest()).runs)) == 1


@pytest.mark.docker
def test_replay_of_a_task_dir_run_gets_its_own_copy_of_the_stored_task(
        tmp_path: Path, sandbox_image: str) -> None:
    """`bilevel run --task DIR` with an in-process controller and an LLM (the fake
    server), then `--replay` of it: the replay runs the first run's stored task (its
    own stored copy, same hash), not the directory as it is now."""
    import random
    import re

    from tests.fake_llm_server import FakeLLMServer, RecordedRequest, Reply, Script
    from tests.test_cli_commands import bilevel
    from tests.test_loop_harness import TEST_KEY, params_answer

    rng = random.Random(7)

    def answer(request: RecordedRequest) -> Script:
        return Reply(params_answer({"X": round(rng.uniform(-4.0, 4.0), 3)}))

    root = write_task(tmp_path / "task")
    files = read_task_dir(root)
    state = tmp_path / "state"
    local = ("--state-dir", str(state), "--image", sandbox_image, "--namespace",
             "pytest-task-replay", "--trials", "2", "--final-seeds", "0")
    keys = {"ANTHROPIC_API_KEY": TEST_KEY}
    with FakeLLMServer(responder=answer) as fake:
        first = bilevel("run", "--provider", "anthropic", "--base-url", fake.anthropic_url,
                        "--task", str(root), *local, env=keys)
        assert first.returncode == 0, first.stderr
        (original,) = re.findall(r"(run-[0-9a-f]{12}): succeeded", first.stdout)
        set_scorer(root, 2)  # a replay reads no local directory either
        (root / "train.py").write_text(
            (root / "train.py").read_text().replace("X = 2.0", "X = 0.5"))
        second = bilevel("run", "--replay", original, *local, env=keys)
        assert second.returncode == 0, second.stderr
        (replayed,) = re.findall(r"(run-[0-9a-f]{12}): succeeded", second.stdout)
        asked = len(fake.requests)
    assert asked == 2  # only the first run asked the LLM
    for run_id in (original, replayed):
        assert read_task_dir(task_bundle.task_dir(state / "runs", run_id)) == files
    decisions = [re.findall(r"trial +\d+ +(\w+) +loss ([\d.]+)", out.stderr)
                 for out in (first, second)]
    assert decisions[0] and decisions[0] == decisions[1]
    assert decisions[1][0] == ("keep", "2.250000")  # the stored baseline, X = 2.0
