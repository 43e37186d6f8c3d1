"""SandboxService.Execute over a real socket against the real Docker engine."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import grpc
import pytest

from controller.api import output_chunks
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from tests.test_api_harness import Stubs, field_violations, leftover_containers, serving

pytestmark = pytest.mark.docker


def _request(code: str, **kwargs: object) -> spb.ExecuteRequest:
    return spb.ExecuteRequest(files={"main.py": code.encode()}, command=["python3", "main.py"],
                              **kwargs)  # type: ignore[arg-type]


def test_execute_streams_accepted_started_output_and_the_full_result(
        tmp_path: Path, sandbox_image: str) -> None:
    code = ("import json, os\nprint('hello from the sandbox')\n"
            "json.dump({'val_bpb': 1.5}, open(os.environ['BILEVEL_METRICS'], 'w'))\n")
    with serving(tmp_path, sandbox_image) as server:
        events = list(Stubs(server.address).sandbox.Execute(_request(code), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[1] == "started" and kinds[-1] == "finished"
    assert set(kinds[2:-1]) <= {"output"}
    out = b"".join(e.output.data for e in events if e.WhichOneof("event") == "output")
    assert b"hello from the sandbox" in out
    result = events[-1].finished.result
    assert result.status == spb.JOB_STATUS_OK and result.exit_code == 0
    assert json.loads(result.metrics_json) == {"val_bpb": 1.5}
    assert result.timings.run_seconds > 0


# Each line in three writes, 0.2 s apart: the sandbox's reader sees them one by one.
PIECES = ("import sys, time\n"
          "for i in range(3):\n"
          "    for piece in ('line ', str(i), '\\n'):\n"
          "        sys.stdout.write(piece); sys.stdout.flush(); time.sleep(0.2)\n")
LINES = b"line 0\nline 1\nline 2\n"


def _stdout(server_address: str, code: str) -> list[bytes]:
    events = Stubs(server_address).sandbox.Execute(_request(code), timeout=60)
    return [e.output.data for e in events if e.WhichOneof("event") == "output"
            and e.output.stream == spb.ExecuteEvent.Output.STREAM_STDOUT]


def test_output_arrives_as_whole_lines_and_without_coalescing_as_writes(
        tmp_path: Path, sandbox_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A held partial line waits for its newline (the flush interval is set long here, so
    this does not depend on timing). Twin: with a coalescer that passes each write on as
    it comes, the same job's writes arrive as nine events, most of them partial lines."""
    monkeypatch.setattr(output_chunks, "FLUSH_SECONDS", 30.0)
    with serving(tmp_path, sandbox_image) as server:
        coalesced = _stdout(server.address, PIECES)
        monkeypatch.setattr(output_chunks.OutputCoalescer, "feed",
                            lambda _self, stream, data, _now: [(stream, data)])
        raw = _stdout(server.address, PIECES)
    assert coalesced == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert b"".join(raw) == LINES
    assert len(raw) > 3 and any(not chunk.endswith(b"\n") for chunk in raw), raw


def test_a_partial_line_is_flushed_while_the_job_waits(
        tmp_path: Path, sandbox_image: str) -> None:
    """A prompt without a newline goes out on its own while the job waits (50 ms flush;
    the job waits 3 s), not glued to the line that follows it."""
    # Whole lines in one write each: the runner's Python is unbuffered, so print() is two
    # writes, and a loaded host may put 50 ms between them (then "before" is a partial
    # line, rightly flushed on its own).
    code = ("import sys, time\n"
            "sys.stdout.write('before\\n'); sys.stdout.flush()\n"
            "sys.stderr.write('oops\\n'); sys.stderr.flush()\n"
            "sys.stdout.write('prompt> '); sys.stdout.flush()\n"
            "time.sleep(3)\n"
            "sys.stdout.write('done\\n')\n")
    with serving(tmp_path, sandbox_image) as server:
        events = list(Stubs(server.address).sandbox.Execute(_request(code), timeout=60))
    outputs = [(e.output.stream, e.output.data) for e in events
               if e.WhichOneof("event") == "output"]
    stdout = [d for s, d in outputs if s == spb.ExecuteEvent.Output.STREAM_STDOUT]
    assert stdout == [b"before\n", b"prompt> ", b"done\n"], outputs
    assert [d for s, d in outputs if s == spb.ExecuteEvent.Output.STREAM_STDERR] == [
        b"oops\n"]
    result = events[-1].finished.result
    assert result.stdout_head == "before\nprompt> done\n" and result.stderr_head == "oops\n"


def test_user_code_failure_is_a_result_with_traceback_frames(
        tmp_path: Path, sandbox_image: str) -> None:
    code = "def boom():\n    raise ValueError('bad knob')\n\nboom()\n"
    with serving(tmp_path, sandbox_image) as server:
        events = list(Stubs(server.address).sandbox.Execute(_request(code), timeout=60))
    result = events[-1].finished.result
    assert result.status == spb.JOB_STATUS_ERROR
    assert result.exception.type == "ValueError" and result.exception.message == "bad knob"
    assert [f.name for f in result.exception.frames][-1] == "boom"
    assert result.exception.frames[-1].lineno == 2


def test_execute_timeout_is_a_result(tmp_path: Path, sandbox_image: str) -> None:
    request = _request("import time\ntime.sleep(60)\n",
                       limits=spb.Limits(wall_seconds=1.0))
    with serving(tmp_path, sandbox_image) as server:
        events = list(Stubs(server.address).sandbox.Execute(request, timeout=60))
    assert events[-1].finished.result.status == spb.JOB_STATUS_TIMEOUT


@pytest.mark.parametrize(("request_", "field"), [
    (spb.ExecuteRequest(files={"m.py": b""}, command=[]), "command"),
    (_request("", limits=spb.Limits(wall_seconds=-1)), "limits.wall_seconds"),
    (_request("", runtime=99), "runtime"),  # no such Runtime value
    (spb.ExecuteRequest(files={"../x.py": b""}, command=["python3", "x.py"]),
     "files['../x.py']"),
    (_request("", env={"BILEVEL_X": "1"}), "env['BILEVEL_X']"),
])
def test_invalid_execute_request_names_the_field(
        tmp_path: Path, sandbox_image: str, request_: spb.ExecuteRequest, field: str) -> None:
    with serving(tmp_path, sandbox_image) as server, \
            pytest.raises(grpc.RpcError) as info:
        list(Stubs(server.address).sandbox.Execute(request_, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(info.value)


def test_execute_is_unavailable_when_docker_is_down(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock") as server, \
            pytest.raises(grpc.RpcError) as info:
        list(Stubs(server.address).sandbox.Execute(_request("print(1)"), timeout=30))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Docker engine" in (info.value.details() or "")


def test_fifty_concurrent_executes_complete_or_are_refused_and_leak_nothing(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient) -> None:
    namespace = "pytest-api-fifty"
    with serving(tmp_path, sandbox_image, namespace=namespace, execute_queue=4) as server:
        stubs = Stubs(server.address)

        def call(i: int) -> str:
            try:
                events = list(stubs.sandbox.Execute(_request(f"print({i})"), timeout=120))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                return "refused"
            assert events[-1].finished.result.status == spb.JOB_STATUS_OK
            return "ok"

        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(call, range(50), timeout=180))
    assert len(outcomes) == 50
    assert outcomes.count("ok") >= 6  # 2 slots + 4 queue places were free at once
    assert outcomes.count("refused") > 0
    assert leftover_containers(docker_client, namespace) == []


def test_client_disconnect_kills_the_job_and_removes_its_container(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient) -> None:
    namespace = "pytest-api-disconnect"
    with serving(tmp_path, sandbox_image, namespace=namespace) as server:
        call = Stubs(server.address).sandbox.Execute(
            _request("import time\nprint('up', flush=True)\ntime.sleep(120)\n"), timeout=120)
        for event in call:
            if event.WhichOneof("event") == "output":
                break
        assert leftover_containers(docker_client, namespace) != []
        call.cancel()
        deadline = time.monotonic() + 30
        while leftover_containers(docker_client, namespace) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftover_containers(docker_client, namespace) == []
        # The slot is free again: a new call runs at once.
        events = list(Stubs(server.address).sandbox.Execute(_request("print(2)"), timeout=60))
        assert events[0].accepted.queue_position == 0


def test_concurrent_calls_share_the_slots(tmp_path: Path, sandbox_image: str) -> None:
    with serving(tmp_path, sandbox_image, slots=1, execute_queue=2) as server:
        stubs = Stubs(server.address)
        results: list[int] = []

        def call() -> None:
            events = list(stubs.sandbox.Execute(_request("import time; time.sleep(1)"),
                                                timeout=60))
            results.append(events[0].accepted.queue_position)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(results) == [0, 1, 2]
