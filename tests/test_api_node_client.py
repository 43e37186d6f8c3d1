"""A foreign-language client: Node's grpc-js built from proto/ alone, against a real
token-protected server on loopback: health, reflection (v1, with comments), Execute, a
run watched across a reconnect (WatchRun after_seq) that misses nothing and sees nothing
twice and whose loss fields agree with their deprecated names, that another principal
can neither list nor get, watch, cancel, resume, read or delete (each answered as for an
unknown run), then deleted by its owner (DeleteRun).
Node and `npm ci` in tests/node_client come from .ci/setup.sh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.principals import Role
from tests.principals_harness import add_principal
from tests.test_api_harness import serving

pytestmark = pytest.mark.docker

CLIENT = Path(__file__).parent / "node_client"
TOKEN = "node-client-token-0123456789abcdef"  # principal alice (a user)
OTHER = "node-other-token-0123456789abcdef"  # principal bob (a user)


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("the Node client needs node >= 18 and `npm ci` in tests/node_client "
                    "(.ci/setup.sh does both)")
    return node


def test_a_node_grpc_js_client_built_from_the_proto(tmp_path: Path, sandbox_image: str) -> None:
    node = _node()
    add_principal(tmp_path, "alice", Role.USER, TOKEN)
    add_principal(tmp_path, "bob", Role.USER, OTHER)
    with serving(tmp_path, sandbox_image, listen="127.0.0.1:0") as server:
        done = subprocess.run([node, str(CLIENT / "client.js"), server.address, TOKEN, OTHER],
                              capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["health"] == {"status": "SERVING", "tokenless_list_runs": "UNAUTHENTICATED"}

    reflection = report["reflection"]
    assert {"bilevel.v1.RunService", "bilevel.v1.SandboxService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"} <= set(reflection["services"])
    assert reflection["files"][0] == "bilevel/v1/runs.proto"
    assert "google/protobuf/timestamp.proto" in reflection["files"]
    assert reflection["create_run_comment"].startswith("Start a run.")

    execute = report["execute"]
    assert execute["kinds"][:2] == ["accepted", "started"]
    assert execute["kinds"][-1] == "finished" and execute["status"] == "JOB_STATUS_OK"
    assert "".join(execute["stdout"]) == "line 0\nline 1\nline 2\n"
    assert execute["stdout_head"] == "line 0\nline 1\nline 2\n"

    watch = report["watch"]
    assert watch["first_connection"] == 3
    assert watch["seqs"] == list(range(1, len(watch["seqs"]) + 1)), "gaps or repeats"
    assert watch["last_kind"] == "run_finished" and watch["state"] == "RUN_STATE_SUCCEEDED"
    assert watch["trials_done"] == 4  # the baseline and max_trials 3
    assert watch["echoed_proposer_kind"] == "PROPOSER_KIND_LOCAL"
    assert watch["has_llm"] is False, "an offline run echoes no LLM settings"
    loss = watch["loss"]
    assert (loss["metric"], loss["maximize"]) == ("val_bpb", False)
    assert isinstance(loss["best"], float) and loss["best"] <= loss["baseline"]
    assert loss["deprecated"] == [loss["baseline"], loss["best"]]
    assert loss["trials"] and all(new == old for new, old in loss["trials"])

    cross = report["cross"]
    assert (cross["owner"], cross["other"]) == ("alice", "bob")
    assert cross["other_lists_it"] is False and cross["other_lists"] == 0
    for method, seen in cross["methods"].items():
        assert seen == {"code": "NOT_FOUND", "same_as_unknown": True, "names_owner": False,
                        "says_permission": False}, method

    deleted = report["delete"]
    assert deleted["run_id"] == watch["run_id"] and deleted["freed_bytes"] > 0
    assert deleted["get_after"] == "NOT_FOUND"
