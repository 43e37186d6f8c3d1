"""Misbehaving mechanisms: each is stopped at a gate or disabled at run time, with a
typed failure record, and the remaining mechanisms keep answering.

Runtime tests activate the bad module directly (skipping the gates) to show that the
sandbox and the runtime checks stop it on their own; the gate tests show where the
gates stop the same modules first. Network tests aim only at a listener this test
starts on this machine.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from controller.research.level2.gates import GateSettings, contract_check, gate_and_activate
from controller.research.level2.records import Effect, Failure, FailureReason
from controller.research.level2.runtime import MechanismSet, MechanismSettings
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.reaper import LABEL_CONTROLLER, LABEL_NAMESPACE, this_owner
from tests.test_mechanism_sandbox import SPACE, loop_state

pytestmark = pytest.mark.docker

SURVIVOR = 'class Survivor:\n    def context(self, state):\n        return "still here"\n'


def bad(body: str) -> str:
    """A mechanism whose context hook runs `body`."""
    return "class Bad:\n    def context(self, state):\n" + textwrap.indent(
        textwrap.dedent(body), " " * 8)


def mechanism_containers() -> int:
    """The mechanism sessions this process has on the engine."""
    client = docker.from_env()
    try:
        return len(client.containers.list(all=True, filters={"label": [
            "io.bilevel.kind=mechanism", f"{LABEL_CONTROLLER}={this_owner()}"]}))
    finally:
        client.close()


@pytest.fixture
def with_survivor(executor: SandboxBackend, request: pytest.FixtureRequest
                  ) -> Iterator[MechanismSet]:
    runtime = getattr(request, "param", "runc")
    settings = MechanismSettings(runtime=runtime, call_timeout_seconds=1.5)
    with MechanismSet(executor, SPACE, settings) as mechanisms:
        assert mechanisms.activate("survivor", SURVIVOR).failure is None
        yield mechanisms
    assert mechanism_containers() == 0


def disable(mechanisms: MechanismSet, source: str, hook: str = "context") -> Failure:
    """Activate `source` as "bad", call the hooks once, return its failure record."""
    record = mechanisms.activate("bad", source)
    assert record.failure is None, record.failure
    state = loop_state(1)
    outcome = mechanisms.context(state) if hook == "context" else mechanisms.suggest(state)
    [failed] = [r for r in outcome.records if r.mechanism == "bad"]
    assert failed.effect is Effect.FAILED and failed.failure is not None
    assert mechanisms.active == ("survivor",) and "bad" in mechanisms.disabled
    # The loop carries on: the next call reaches the remaining mechanism.
    again = mechanisms.context(loop_state(2))
    assert again.value == "[survivor] still here"
    assert [r.mechanism for r in again.records] == ["survivor"]
    return failed.failure


def test_deny_hook_that_raises_is_disabled_with_its_traceback(
        with_survivor: MechanismSet) -> None:
    failure = disable(with_survivor, bad('''
        print("about to fail")
        return {}["missing"]
    '''))
    assert failure.reason is FailureReason.RAISED
    assert failure.exception is not None and failure.exception.type == "KeyError"
    assert failure.exception.frames[-1].name == "context"
    assert 'return {}["missing"]' in failure.traceback_text()
    assert "about to fail" in failure.stderr


@pytest.mark.parametrize("with_survivor", ["runc", "runsc"], indirect=True)
def test_deny_hook_that_hangs_is_killed_at_its_limit(
        executor: SandboxBackend, with_survivor: MechanismSet) -> None:
    failure = disable(with_survivor, bad('''
        while True:
            pass
    '''))
    assert failure.reason is FailureReason.TIMEOUT
    assert "longer than 1.5 s" in failure.message
    assert mechanism_containers() == 1  # only the survivor's session is left


def test_deny_unbounded_memory_is_disabled_as_oom(with_survivor: MechanismSet) -> None:
    with_survivor.settings = MechanismSettings(call_timeout_seconds=20)
    failure = disable(with_survivor, bad('''
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    '''))
    assert failure.reason is FailureReason.OOM, failure


@pytest.mark.parametrize("with_survivor", ["runc", "runsc"], indirect=True)
def test_deny_network_from_a_mechanism(with_survivor: MechanismSet, bridge_gateway: str,
                                       listener: tuple[int, list[str]]) -> None:
    port, accepted = listener
    failure = disable(with_survivor, bad(f'''
        import socket
        errors = []
        for host in ("{bridge_gateway}", "127.0.0.1"):
            try:
                socket.create_connection((host, {port}), timeout=1).close()
                errors.append(host + " CONNECTED")
            except OSError as exc:
                errors.append(host + " " + type(exc).__name__)
        raise ConnectionError("; ".join(errors))
    '''))
    assert failure.exception is not None and failure.exception.type == "ConnectionError"
    assert "CONNECTED" not in failure.exception.message, failure.exception.message
    assert accepted == []


def test_deny_filesystem_outside_the_sandbox(with_survivor: MechanismSet) -> None:
    controller_file = str(Path(__file__).resolve())
    failure = disable(with_survivor, bad(f'''
        outcomes = []
        for path in ("{controller_file}", "/proc/1/environ"):
            try:
                open(path, "rb").read()
                outcomes.append("READ " + path)
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        for path in ("/etc/bilevel-pwned", "/opt/bilevel/mechanism_host.py"):
            try:
                open(path, "w").write("x")
                outcomes.append("WROTE " + path)
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        raise PermissionError("; ".join(outcomes))
    '''))
    assert failure.exception is not None
    message = failure.exception.message
    assert "READ" not in message and "WROTE" not in message, message
    assert message.startswith("FileNotFoundError"), message
    assert not os.path.exists("/etc/bilevel-pwned")


def test_deny_output_flood(with_survivor: MechanismSet) -> None:
    failure = disable(with_survivor, bad('''
        while True:
            print("x" * 10000)
    '''))
    assert failure.reason is FailureReason.OUTPUT_LIMIT


def test_deny_forged_protocol_line(with_survivor: MechanismSet) -> None:
    # Mechanism code that finds the host's private protocol fd and writes to it.
    failure = disable(with_survivor, bad('''
        import os
        for fd in range(3, 10):
            try:
                os.write(fd, b"not json\\n")
            except OSError:
                pass
        return "forged"
    '''))
    assert failure.reason is FailureReason.PROTOCOL


@pytest.mark.parametrize(("hook", "body", "says"), [
    ("context", "return 5", "must return a string"),
    ("context", "return {1, 2}", "not JSON"),
    ("suggest", 'return [{"changes": {"NOPE": 1}}]', "NOPE"),
    ("suggest", 'return [{"changes": {"DEPTH": 99}}]', "outside [2, 16]"),
    ("suggest", 'return {"changes": {}}', "must return a list"),
])
def test_deny_malformed_answers(with_survivor: MechanismSet, hook: str, body: str,
                                says: str) -> None:
    source = (f"class Bad:\n    def {hook}(self, state):\n        {body}\n")
    failure = disable(with_survivor, source, hook)
    assert failure.reason is FailureReason.INVALID_RESULT
    assert says in failure.message, failure.message


def test_deny_module_that_does_not_load(with_survivor: MechanismSet) -> None:
    record = with_survivor.activate("broken", "class Broken:\n    def context(self, s)\n")
    assert record.failure is not None
    assert record.failure.reason is FailureReason.LOAD_FAILED
    assert record.failure.exception is not None
    assert record.failure.exception.type == "SyntaxError"
    assert with_survivor.active == ("survivor",)


# -- the gates stop the same modules before they reach a run ------------------------------

def test_gate_static_stops_invalid_python_and_network(executor: SandboxBackend) -> None:
    with MechanismSet(executor, SPACE) as mechanisms:
        for source, reason in (("class M(:\n", "not valid Python"),
                               (bad("import socket\nreturn ''"), "'socket'"),
                               (bad("return open('/etc/passwd').read()"), "'open'")):
            admission = gate_and_activate(mechanisms, "candidate", source)
            assert admission.stopped_at == "static"
            assert reason in admission.verdicts[-1].reason
        assert mechanisms.active == ()


@pytest.mark.parametrize(("body", "reason"), [
    ('raise ValueError("nope")', "context: raised: context raised ValueError: nope"),
    ("while True:\n    pass", "context: timeout"),
    ("hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))", "context: oom"),
    ("import random\nreturn str(random.Random().random())", "not deterministic"),
])
def test_gate_contract_stops_misbehaving_mechanisms(executor: SandboxBackend, body: str,
                                                    reason: str) -> None:
    verdict = contract_check(executor, SPACE, "candidate", bad(body), GateSettings(),
                             MechanismSettings(call_timeout_seconds=1.5))
    assert not verdict.passed
    assert verdict.reason.startswith(reason), verdict.reason
    assert mechanism_containers() == 0


SESSION_OWNER = textwrap.dedent("""
    import sys, time
    from controller.research.level1.space import Knob, SearchSpace
    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.backend_config import ExecutorConfig
    from controller.sandbox.executor import DockerExecutor
    from controller.research.level2.runtime import MechanismSet
    ex = DockerExecutor(ExecutorConfig(image=sys.argv[1], namespace=sys.argv[2]))
    mechanisms = MechanismSet(ex, SearchSpace((Knob("WD", "float", 0.0, 1.0),)))
    mechanisms.activate("m", "class M:\\n    def context(self, s):\\n        return ''\\n")
    print("active", flush=True)
    time.sleep(300)
""")


def test_deny_leftover_sessions_after_controller_sigkill(
        docker_client: docker.DockerClient, sandbox_image: str) -> None:
    namespace = f"reap-{uuid.uuid4().hex[:8]}"
    selector = {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
    proc = subprocess.Popen([sys.executable, "-c", SESSION_OWNER, sandbox_image, namespace],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"active\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(docker_client.containers.list(filters=selector)) == 1  # left running
    DockerExecutor(ExecutorConfig(image=sandbox_image, namespace=namespace)).close()
    assert docker_client.containers.list(all=True, filters=selector) == []
    assert docker_client.volumes.list(filters=selector) == []


@pytest.mark.parametrize("with_survivor", ["runc", "runsc"], indirect=True)
def test_deny_numpy_ctypes_write_is_contained_by_the_sandbox(
        with_survivor: MechanismSet) -> None:
    """Issue 11 #13. The static gate refuses numpy.ctypeslib; activated past the gate, the
    same code gets raw libc, yet all it can reach is its own container: a forged line on
    the protocol fd disables it, and the host's files are out of reach."""
    source = bad('''
        import numpy as np
        libc = np.ctypeslib.ctypes.CDLL(None)
        created = libc.open(b"/etc/bilevel-pwned", 0o101, 0o644)  # O_WRONLY | O_CREAT
        print("open returned", created)
        for fd in range(3, 20):
            libc.write(fd, b"forged by ctypes\\n", 17)
        return "forged"
    ''')
    admission = gate_and_activate(with_survivor, "candidate", source)
    assert admission.stopped_at == "static" and "'ctypeslib'" in admission.verdicts[0].reason
    assert with_survivor.active == ("survivor",)
    # Loading libc through ctypes under gVisor on a loaded host can outlast 1.5 s; the
    # claim here is what the forged line does, not how fast, so the limit is generous.
    with_survivor.settings = dataclasses.replace(with_survivor.settings,
                                                 call_timeout_seconds=20)
    failure = disable(with_survivor, source)  # the gate bypassed
    # Contained: the forged line was refused as a reply, not taken as one, and the file
    # the code opened (in its read-only container) is not on this host. (Its stderr is
    # not asserted on: it may not have arrived when the failure is recorded.)
    assert failure.reason is FailureReason.PROTOCOL, failure
    assert "forged by ctypes" in failure.message, failure.message
    assert not os.path.exists("/etc/bilevel-pwned")
