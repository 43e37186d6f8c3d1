"""The `bilevel` CLI end to end, as a user runs it (subprocesses, no TTY as in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_serve_resume import bilevel_serve

pytestmark = pytest.mark.docker

TOKEN = "cli-test-token-0123456789abcdef"


def bilevel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "--log-level", "warning",
                           *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_run_with_an_in_process_controller_then_inspect_it(
        tmp_path: Path, sandbox_image: str) -> None:
    local = ("--state-dir", str(tmp_path), "--image", sandbox_image, "--namespace",
             "pytest-cli-local")
    done = bilevel("run", "--preset", "surrogate", "--trials", "3", *local)
    assert done.returncode == 0, done.stderr
    assert "trial   0  keep" in done.stderr  # one line per trial without a TTY
    assert done.stderr.count("val_bpb") >= 4
    run_id, _, summary = done.stdout.strip().partition(": ")
    assert run_id.startswith("run-") and summary.startswith("succeeded - trial budget of 3")

    listed = bilevel("runs", *local)
    assert listed.returncode == 0 and run_id in listed.stdout and "succeeded" in listed.stdout

    tsv = bilevel("artifact", run_id, "results.tsv", *local)
    assert tsv.returncode == 0
    assert tsv.stdout.splitlines()[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    out = tmp_path / "best.py"
    assert bilevel("artifact", run_id, "best/train.py", "-o", str(out), *local).returncode == 0
    assert "DEPTH =" in out.read_text()

    watched = bilevel("watch", run_id, *local)
    assert watched.returncode == 0 and "succeeded" in watched.stdout

    again = bilevel("cancel", run_id, *local)
    assert again.returncode == 2 and "FAILED_PRECONDITION" in again.stderr
    bad = bilevel("artifact", run_id, "nope", *local)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr


def test_run_against_a_server_with_a_token(tmp_path: Path, sandbox_image: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"BILEVEL_TOKEN": TOKEN}
    with bilevel_serve(tmp_path, sandbox_image, "pytest-cli-remote", env=env) as (_, address):
        refused = bilevel("run", "--server", address, "--preset", "surrogate",
                          env={"BILEVEL_TOKEN": ""})
        assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
        done = bilevel("run", "--server", address, "--token-file", str(token_file),
                       "--preset", "surrogate", "--trials", "2")
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.split(":")[0]
        listed = bilevel("runs", "--server", address, env=env)
        assert run_id in listed.stdout
        unknown = bilevel("watch", "run-unknown", "--server", address, env=env)
        assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr
        invalid = bilevel("run", "--server", address, "--preset", "surrogate", "--trials", "0",
                          env=env)
        assert invalid.returncode == 2 and "--trials: must be" in invalid.stderr
