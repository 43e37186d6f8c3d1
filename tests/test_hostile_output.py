"""Everything a job or a mechanism writes is hostile (issue 11, findings 7 and 8).

Property tests feed arbitrary bytes and JSON-ish values to every parser of job output
and mechanism replies and check that each raises only its documented error and returns
bounded values that the API can send (the proto message is built and serialized). The
`test_deny_*` tests run the attacks on the real engine: forged and 100k-deep exception
records, oversized and malformed metrics, returned file names with newlines and bidi
controls (over real gRPC), a forged record inside a run, and a mechanism that writes
100k-deep JSON or a 100 MB line to its protocol fd.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api import convert, enums
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.research.level1 import evaluation
from controller.research.level1.loop import InnerLoop, StopSignal
from controller.research.level1.offline.local import LocalPerturbation
from controller.research.level2.records import Effect, FailureReason
from controller.research.level2.runtime import MechanismSet, MechanismSettings
from controller.research.settings import Budgets, RunSettings, SearchSettings
from controller.research.task import TrialOutcome
from controller.research.tasks.surrogate import KNOB_NAMES, SOURCE, SurrogateTask
from controller.sandbox import archive, bounded_json, job_output, replies
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.bounded_json import Caps, JSONLimitError
from controller.sandbox.replies import MAX_LINE_BYTES, Reply, SessionDead, parse_reply
from controller.sandbox.session import _Frames
from controller.sandbox.spec import JobResult, Status
from controller.store.artifacts import ArtifactStore
from controller.store.records import RunState, TrialStatus
from controller.store.runs import RunStore
from mechanisms.wire import (
    FilterVerdict,
    LoopState,
    MechanismProposal,
    TrialView,
    WireError,
    knob_from_json,
)
from tests.conftest import RUNTIMES
from tests.test_api_harness import Stubs, serving
from tests.test_mechanism_sandbox import SPACE, loop_state
from trainer import knobs

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# JSON-ish values: every JSON type, plus the numbers and strings that break naive code
# (2**40 and 10**30 for int32 fields, lone surrogates, control and bidi characters).
_weird_text = st.text(alphabet=st.characters(codec=None), max_size=40) | st.sampled_from(
    ["\ud800", "a\nb", "\u202etxt.exe", "\x1b[31m", "\x00", "x" * 300])
_numbers = st.integers() | st.sampled_from([2**31, -2**31 - 1, 2**40, 10**30]) | st.floats()
_scalars = st.none() | st.booleans() | _numbers | _weird_text
json_ish = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(_weird_text, inner, max_size=5), max_leaves=30)
_frame = st.fixed_dictionaries({}, optional={
    "filename": json_ish, "lineno": json_ish, "name": json_ish, "line": json_ish})
exception_ish = st.fixed_dictionaries({}, optional={
    "type": json_ish, "message": json_ish,
    "frames": st.lists(_frame | json_ish, max_size=60) | json_ish})


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _assert_bounded(value: Any, caps: Caps, depth: int = 0) -> None:
    """Plain, finite, UTF-8-clean JSON within `caps`."""
    assert depth <= caps.max_depth
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, float):
        assert value == value and abs(value) != float("inf")
    elif isinstance(value, list):
        assert len(value) <= caps.max_items
        for item in value:
            _assert_bounded(item, caps, depth + 1)
    elif isinstance(value, dict):
        assert len(value) <= caps.max_items
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_bounded(key, caps, depth + 1)
            _assert_bounded(item, caps, depth + 1)
    else:
        assert value is None or isinstance(value, bool | int)
    json.dumps(value, allow_nan=False).encode("utf-8")


def _proto(result: JobResult) -> spb.JobResult:
    message = convert.job_result(result)
    message.SerializeToString()
    return message


# The bounded JSON reader.

SMALL = Caps(max_bytes=4096, max_depth=6, max_str=50, max_items=8)


@PROPERTY
@given(st.binary(max_size=600) | st.builds(_dumps, json_ish))
def test_bounded_loads_raises_only_its_error_and_returns_bounded_values(data: bytes) -> None:
    for caps in (SMALL, Caps(max_depth=6, max_str=50, max_items=8, truncate=True,
                             nonfinite_null=True)):
        try:
            value = bounded_json.loads(data, caps)
        except JSONLimitError:
            continue
        _assert_bounded(value, caps)


@pytest.mark.parametrize("data", [
    _deep(100_000), b'{"a":' * 100_000, b'"' + b'\\"' * 100_000, b"1" * 5000,
    b"[" + b"1e999," * 10 + b"1]", b'["\\ud800"]', b"NaN", b"\xff\xfe", b"x" * 8192,
])
def test_bounded_loads_refuses_the_attacks_by_name(data: bytes) -> None:
    with pytest.raises(JSONLimitError):
        bounded_json.loads(data, SMALL)


def test_depth_is_checked_before_parsing_and_ignores_brackets_in_strings() -> None:
    assert bounded_json.loads(b'["[[[[[[[[[[[[", {"k": "}}}}}}"}]', SMALL) == [
        "[[[[[[[[[[[[", {"k": "}}}}}}"}]
    assert bounded_json.loads(_deep(6), SMALL) == [[[[[[]]]]]]
    with pytest.raises(JSONLimitError, match="deeper than 6"):
        bounded_json.loads(_deep(7), SMALL)


def test_truncated_strings_say_so_and_ints_outside_int32_are_dropped() -> None:
    caps = Caps(max_str=5, truncate=True)
    assert bounded_json.loads(b'"abcdefgh"', caps) == "abcde [truncated 3 chars]"
    assert [bounded_json.int32(v) for v in (7, 2**31, -2**31 - 1, True, "7")] == [7, 0, 0, 0, 0]


# The runner's result, the exception record, the metrics.


@PROPERTY
@given(st.binary(max_size=600) | st.builds(_dumps, json_ish) | st.builds(
    lambda exc, metrics, code, status, detail: _dumps({
        "status": status, "exit_code": code, "signal": code, "detail": detail,
        "exception": exc, "metrics": metrics}),
    exception_ish, json_ish, json_ish, json_ish, json_ish))
def test_runner_result_never_raises_and_always_converts_to_proto(data: bytes) -> None:
    report = job_output.runner_result(data)
    fields = report.fields()
    assert fields == {} or len(fields["status"]) <= job_output.STATUS_CHARS
    _assert_bounded(report.metrics, job_output.METRICS_CAPS)
    result = JobResult(status=Status.ERROR, exit_code=report.exit_code,
                       exception=report.exception, metrics=report.metrics,
                       detail="; ".join([report.detail, report.metrics_error, report.problem]))
    message = _proto(result)
    if report.exception is not None:
        assert len(message.exception.frames) <= job_output.MAX_FRAMES
        assert len(message.exception.message) <= job_output.MESSAGE_CHARS + 40


@PROPERTY
@given(exception_ish | json_ish)
def test_exception_records_convert_from_the_job_and_from_stored_events(raw: Any) -> None:
    for required in (True, False):
        info = job_output.exception_info(raw, required=required)
        assert (info is not None) or required
        if info is not None:
            assert all(0 <= f.lineno <= bounded_json.INT32_MAX for f in info.frames)
            _proto(JobResult(status=Status.ERROR, exit_code=1, exception=info))
    stored = raw if isinstance(raw, dict) else {"type": raw}
    message = convert.exception_info(stored)
    if message is not None:
        message.SerializeToString()


def test_a_lone_surrogate_in_a_message_does_not_void_the_runners_result() -> None:
    data = json.dumps({"status": "error", "exit_code": 1,
                       "exception": {"type": "E", "message": "bad \ud800 text"}}).encode()
    report = job_output.runner_result(data)
    assert report.present and report.exception is not None
    assert report.exception.message == "bad ? text"


def test_forged_linenos_become_zero_not_a_crash() -> None:
    raw = {"type": "X", "frames": [{"lineno": "x"}, {"lineno": 2**40}, {"lineno": True},
                                   {"lineno": -5}, {"lineno": 12}]}
    info = job_output.exception_info(raw)
    assert info is not None and [f.lineno for f in info.frames] == [0, 0, 0, 0, 12]
    assert convert.exception_info(raw) is not None


@pytest.mark.parametrize(("raw", "says"), [
    ({"__error__": "/job/.bilevel/metrics.json exceeds 1048576 bytes"}, "exceeds"),
    ([1, 2], "holds a JSON list, not an object"),
    ({"curve": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, "deeper than 16"),
    ({"log": "x" * (70 << 10)}, "over the cap"),
])
def test_dropped_metrics_say_why(raw: Any, says: str) -> None:
    metrics, why = job_output.metrics_of(raw)
    assert metrics == {} and says in why


# Returned files.


def _tar_name(name: str) -> bool:
    """Names tarfile can write (PAX: UTF-8, with surrogate escapes for raw bytes)."""
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return bool(name)


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@PROPERTY
@given(st.binary(max_size=3000) | st.builds(
    _tar, st.lists(st.tuples(st.builds(lambda n: "out/" + n, _weird_text.filter(_tar_name)),
                             st.binary(max_size=64)), max_size=8)))
def test_unpack_returned_never_raises_and_keeps_only_safe_names(data: bytes) -> None:
    chunks = [data[i:i + 700] for i in range(0, len(data), 700)]
    unpacked = archive.unpack_returned(chunks, root="out", max_bytes=1 << 16)
    for name in unpacked.files:
        assert not archive.unsafe_name(name)
    assert all(entry.isascii() and len(entry) < 400 for entry in unpacked.refused)
    _proto(JobResult(status=Status.OK, exit_code=0, files=unpacked.files,
                     detail=", ".join(unpacked.refused)))


@PROPERTY
@given(st.binary(max_size=3000) | st.builds(lambda data: _tar([("result.json", data)]),
                                             st.binary(max_size=2000)))
def test_read_single_returns_bytes_within_the_cap_or_none(data: bytes) -> None:
    content = archive.read_single([data[:1000], data[1000:]], max_bytes=1500)
    assert content is None or (isinstance(content, bytes) and len(content) <= 1500)


def test_unsafe_names_are_refused_and_listed_escaped() -> None:
    entries = [("out/a\nb.txt", b"1"), ("out/evil\u202etxt.exe", b"2"), ("out/ok é.txt", b"3"),
               ("out/zero\u200bwidth", b"4"), ("out/bell\x07", b"5")]
    unpacked = archive.unpack_returned([_tar(entries)], root="out", max_bytes=1 << 16)
    assert unpacked.files == {"ok é.txt": b"3"}
    text = ", ".join(unpacked.refused)
    assert "a\\nb.txt" in text and "evil\\u202etxt.exe" in text and "\\u200b" in text
    assert "\n" not in text and "\u202e" not in text and "\x07" not in text


# Mechanism replies: the protocol line and the wire shapes.


@PROPERTY
@given(st.binary(max_size=600) | st.builds(_dumps, json_ish) | st.builds(
    lambda ok, result, error: _dumps({"id": 1, "ok": ok, "result": result, "error": error}),
    st.booleans(), json_ish, exception_ish | json_ish))
def test_parse_reply_is_a_reply_or_a_protocol_death(data: bytes) -> None:
    reply = parse_reply(data, 1)
    if isinstance(reply, SessionDead):
        assert reply.reason is replies.DeathReason.PROTOCOL
        return
    assert isinstance(reply, Reply)
    _assert_bounded(reply.result, replies.REPLY_CAPS)
    if reply.error is not None:
        _proto(JobResult(status=Status.ERROR, exit_code=1, exception=reply.error))


def test_deep_reply_is_a_protocol_death_not_a_recursion_error() -> None:
    dead = parse_reply(b'{"id": 1, "ok": true, "result": ' + _deep(100_000) + b"}", 1)
    assert isinstance(dead, SessionDead) and "deeper than" in dead.detail


def _stream_frames(payload: bytes, frames: list[tuple[int, bytes]] | None = None
                   ) -> tuple[socket.socket, threading.Thread]:
    """A socket carrying docker's multiplexed frames, written by a thread."""
    reader, writer = socket.socketpair()

    def write() -> None:
        try:
            for kind, data in frames or [(1, payload)]:
                writer.sendall(struct.pack(">BxxxL", kind, len(data)))
                writer.sendall(data)
        except OSError:
            pass  # the reader gave up: that is the point
        finally:
            writer.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return reader, thread


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=12))
def test_frames_reader_returns_lines_or_raises_only_its_errors(
        frames: list[tuple[int, bytes]]) -> None:
    sock, thread = _stream_frames(b"", frames)
    reader = _Frames(sock, output_cap=1000)
    try:
        while (line := reader.line(time.monotonic() + 5)) is not None:
            assert b"\n" not in line and len(line) <= MAX_LINE_BYTES
            assert isinstance(parse_reply(line, 1), Reply | SessionDead)
    except SessionDead as dead:
        assert dead.reason is replies.DeathReason.OUTPUT_LIMIT
    finally:
        sock.close()
        thread.join(5)


@pytest.mark.parametrize(("cap", "reason"), [(64 << 20, "protocol"), (256 << 10, "output_limit")])
def test_a_100_mb_line_is_refused_at_the_cap_not_buffered(cap: int, reason: str) -> None:
    # One write of 100 MB is one docker frame: the reader must stop at its caps.
    sock, thread = _stream_frames(b"x" * (100 << 20))
    reader = _Frames(sock, output_cap=cap)
    with pytest.raises(SessionDead) as info:
        reader.line(time.monotonic() + 60)
    sock.close()
    thread.join(10)
    assert info.value.reason.value == reason
    assert reader.total <= min(cap, MAX_LINE_BYTES) + (64 << 10)  # one read past a cap


@PROPERTY
@given(json_ish)
def test_wire_parsers_raise_only_wire_errors(raw: Any) -> None:
    parsers: list[Callable[[], object]] = [
        lambda: MechanismProposal.from_json(raw, SPACE),
        lambda: FilterVerdict.from_json(raw, SPACE),
        lambda: TrialView.from_json(raw), lambda: LoopState.from_json(raw),
        lambda: knob_from_json(raw), lambda: MechanismProposal.from_json({"changes": raw}, SPACE),
        lambda: FilterVerdict.from_json({"action": "replace", "reason": "r",
                                   "proposal": {"changes": {"DEPTH": raw}}}, SPACE),
        lambda: LoopState.from_json({**loop_state(1).to_json(), "history": raw})]
    for parse in parsers:
        try:
            parse()
        except WireError as exc:
            assert len(str(exc)) < 1300


# The loop: a failure handling one trial's result fails that trial, not the run.


class _Breaks:
    """The surrogate without Docker, whose result handling raises on changed knobs."""

    def __init__(self) -> None:
        self.inner = SurrogateTask(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        if source != self.inner.baseline_source():
            int("x")  # what a forged field did to the executor's conversion
        return self.inner.evaluate(source, seed, cancel)


def _loop(tmp_path: Path, task: Any, trials: int) -> tuple[InnerLoop, RunStore]:
    store = RunStore(tmp_path / "db.sqlite3")
    settings_ = RunSettings(search=SearchSettings(seed=1), budgets=Budgets(max_trials=trials))
    store.create_run("run-test", settings_.to_dict())
    loop = InnerLoop("run-test", settings_, task, LocalPerturbation(1, settings_.proposer),
                     store, ArtifactStore(tmp_path / "runs"), StopSignal())
    return loop, store


def test_deny_result_handling_error_fails_the_trial_not_the_run(tmp_path: Path) -> None:
    loop, store = _loop(tmp_path, _Breaks(), trials=3)
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 4, run.stop_reason
    failed = store.trials("run-test")[1:]
    assert all(t.status is TrialStatus.CRASH and t.job_status == "sandbox_error"
               for t in failed)
    assert evaluation.guarded(_Breaks(), "changed", 1, threading.Event()).detail.endswith(
        "ValueError: invalid literal for int() with base 10: 'x'")


# On the real engine.

JOBS = {
    # a forged record, oversized metrics, names with a newline and a bidi override
    "forged": '''
import json, os
frames = [{"filename": "f.py", "lineno": "x", "name": "n", "line": "l"},
          {"filename": "f.py", "lineno": 2**40, "name": ["not", "text"], "line": "l"},
          {"filename": "g.py", "lineno": 7, "name": "ok", "line": "raise X"}]
record = json.dumps({"type": "Forged", "message": "m" * 100_000, "frames": frames})
open(os.path.join(os.environ["BILEVEL_EXCEPTION_DIR"], f"{os.getpid()}.json"), "w").write(record)
open(os.environ["BILEVEL_METRICS"], "w").write(json.dumps({"pad": "x" * (2 << 20)}))
for name in ("a\\nb.txt", "evil\\u202etxt.exe", "ok.txt"):
    open(os.path.join("/job/out", name), "w").write("data")
raise SystemExit(3)
''',
    # a 100k-deep exception record and a metrics file that is not JSON
    "deep": '''
import os
open(os.path.join(os.environ["BILEVEL_EXCEPTION_DIR"], f"{os.getpid()}.json"), "w").write(
    '{"type": "Deep", "frames": ' + "[" * 100000 + "]" * 100000 + "}")
open(os.environ["BILEVEL_METRICS"], "w").write("{not json")
raise SystemExit(4)
''',
}


def _execute(stubs: Stubs, code: str, runtime: str) -> spb.JobResult:
    request = spb.ExecuteRequest(files={"main.py": code.encode()}, command=["python3", "main.py"],
                                 runtime=enums.to_enum(enums.RUNTIMES, runtime))
    events: list[spb.ExecuteEvent] = list(stubs.sandbox.Execute(request, timeout=120))
    assert events[-1].WhichOneof("event") == "finished"
    return events[-1].finished.result


@pytest.mark.docker
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_forged_job_output_over_grpc(tmp_path: Path, sandbox_image: str,
                                          runtime: str) -> None:
    with serving(tmp_path, sandbox_image) as server:
        stubs = Stubs(server.address)
        forged = _execute(stubs, JOBS["forged"], runtime)
        deep = _execute(stubs, JOBS["deep"], runtime)
        after = _execute(stubs, "print('still serving')\n", runtime)
        health = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert forged.status == spb.JOB_STATUS_ERROR and forged.exit_code == 3
    exc = forged.exception
    assert exc.type == "Forged" and len(exc.message) < 4100
    assert [f.lineno for f in exc.frames] == [0, 0, 7] and exc.frames[2].name == "ok"
    assert "metrics dropped" in forged.detail and json.loads(forged.metrics_json) == {}
    assert dict(forged.files) == {"ok.txt": b"data"}
    assert "a\\nb.txt" in forged.detail and "evil\\u202etxt.exe" in forged.detail
    assert "\u202e" not in forged.detail
    # The deep record: a normal error result, with no exception or a bounded one.
    assert deep.status == spb.JOB_STATUS_ERROR and deep.exit_code == 4
    assert not deep.HasField("exception") or len(deep.exception.frames) == 0
    assert "metrics dropped" in deep.detail and "not valid JSON" in deep.detail
    assert after.status == spb.JOB_STATUS_OK and b"still serving" in after.stdout_head.encode()
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.docker
def test_deny_forged_record_in_a_run_fails_only_its_trial(
        tmp_path: Path, executor: SandboxBackend) -> None:
    # Every candidate (any knob off the baseline's value) forges its record.
    base = {name: value for name, value in knobs.read_knobs(SOURCE.read_text()).items()
            if name in KNOB_NAMES}
    forge = (f"def _forge():\n    if all(globals()[k] == v for k, v in {base!r}.items()):\n"
             "        return\n" + textwrap.indent(JOBS["forged"].strip("\n"), " " * 4))
    forging = SOURCE.read_text().replace("def main():",
                                         f"{forge}\n\n\ndef main():\n    _forge()")
    loop, store = _loop(tmp_path, SurrogateTask(executor, baseline=forging), trials=3)
    loop.run()
    run = store.get_run("run-test")
    assert run.state is RunState.SUCCEEDED and run.trials_done == 4, run.stop_reason
    for trial in store.trials("run-test")[1:]:
        assert trial.status is TrialStatus.CRASH and trial.exception is not None
        assert trial.exception["type"] == "Forged"
        assert [f["lineno"] for f in trial.exception["frames"]] == [0, 0, 7]


@pytest.fixture(params=RUNTIMES)
def mechanisms(executor: SandboxBackend, request: pytest.FixtureRequest
               ) -> Iterator[MechanismSet]:
    settings_ = MechanismSettings(runtime=request.param, call_timeout_seconds=5.0)
    with MechanismSet(executor, SPACE, settings_) as active:
        survivor = 'class Survivor:\n    def context(self, state):\n        return "here"\n'
        assert active.activate("survivor", survivor).failure is None
        yield active


def _writer(payload: str) -> str:
    """A mechanism whose context hook writes `payload` to every fd but 0-2 (the host's
    private protocol fd among them)."""
    return ("class Bad:\n    def context(self, state):\n        import os\n"
            f"        data = {payload}\n"
            "        for fd in range(3, 10):\n            try:\n"
            "                os.write(fd, data)\n"
            "            except OSError:\n                pass\n        return 'x'\n")


@pytest.mark.docker
@pytest.mark.parametrize(("payload", "reasons"), [
    ('b\'{"id": 2, "ok": true, "result": \' + b"[" * 100000 + b"]" * 100000 + b"}\\n"',
     {FailureReason.PROTOCOL}),
    ('b"x" * (100 << 20) + b"\\n"', {FailureReason.OUTPUT_LIMIT, FailureReason.PROTOCOL}),
], ids=["deep_json", "100mb_line"])
def test_deny_mechanism_deep_json_or_huge_line_is_disabled_promptly(
        mechanisms: MechanismSet, payload: str, reasons: set[FailureReason]) -> None:
    assert mechanisms.activate("bad", _writer(payload)).failure is None
    started = time.monotonic()
    outcome = mechanisms.context(loop_state(1))
    seconds = time.monotonic() - started
    [failed] = [r for r in outcome.records if r.mechanism == "bad"]
    assert failed.effect is Effect.FAILED and failed.failure is not None
    assert failed.failure.reason in reasons, failed.failure
    # Before: the kill waited ~60 s on the undrained stream (docker-py's read timeout).
    # A bound far from both that and from the sub-second it takes now.
    assert seconds < 30
    assert mechanisms.active == ("survivor",)
    assert mechanisms.context(loop_state(2)).value == "[survivor] here"


@pytest.mark.docker
def test_sensitivity_unbounded_replies_let_deep_json_escape(
        executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # The twin of the deep-JSON deny test: with plain json.loads in place of the bounded
    # parser, the RecursionError escapes the mechanism set (it failed whole runs).
    monkeypatch.setattr(replies, "bounded_json", SimpleNamespace(
        loads=lambda raw, _caps, _what: json.loads(raw)))
    with MechanismSet(executor, SPACE, MechanismSettings(call_timeout_seconds=5.0)) as active:
        payload = 'b\'{"id": 2, "ok": true, "result": \' + b"[" * 100000 + b"]" * 100000 + b"}\\n"'
        assert active.activate("bad", _writer(payload)).failure is None
        with pytest.raises(RecursionError):
            active.context(loop_state(1))
