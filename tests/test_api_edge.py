"""The API edge over a real socket (issue 11, findings 9-11): tokenless bodies are
refused unread, every method's size is capped, malformed bytes are INVALID_ARGUMENT, a
client cannot pick a GPU, and it mounts only data volumes published to it.

The memory tests run the controller in a subprocess and read its peak RSS (VmHWM) from
/proc, so the client's own buffers do not count.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from controller.api import convert, enums, reflection
from controller.api.edge import DEFAULT_CAP_BYTES
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.volumes import ensure_data_volume, publish_data_volume
from tests.test_api_harness import Stubs, field_violations, serving

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests-0123456789abcdef"
NO_DOCKER = "unix:///nonexistent/docker.sock"
EXECUTE = "/bilevel.v1.SandboxService/Execute"
MALFORMED = b"\x0a\x7f"  # field 1, 127 bytes long, then nothing: truncated

SERVER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from controller import principals
    from controller.api import edge
    from controller.api.auth import HEALTH_PREFIX
    from controller.api.server import ControllerServer
    from controller.config import ServerConfig
    from controller.sandbox.backend_config import ExecutorConfig
    if sys.argv[3] == "read-then-refuse":  # the twin: the edge as it was, built here
        async def authenticate(call, context):  # no refusal before the body is read
            return call.edge.auth.principal(call.metadata, context.auth_context(),
                                            context.peer())
        read = edge._Body.one
        async def read_then_refuse(body, requests, context, ticket):
            message = await read(body, requests, context, ticket)
            if principals.CURRENT.get() is None and \
                    not body.method.startswith(HEALTH_PREFIX):
                await edge._unauthenticated(context)
            return message
        edge._Call.authenticate = authenticate
        edge._Body.one = read_then_refuse
    async def main():
        server = ControllerServer(ServerConfig(
            listen="127.0.0.1:0", state_dir=Path(sys.argv[1]), tokens=(sys.argv[2],),
            executor=ExecutorConfig(docker_url="unix:///nonexistent/docker.sock")))
        print("PORT", await server.start(), flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


@contextmanager
def controller_process(state_dir: Path, mode: str) -> Iterator[tuple[int, str]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(state_dir), TOKEN, mode],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        port = next(int(line.split()[1]) for line in proc.stdout if line.startswith(b"PORT"))
        yield proc.pid, f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def peak_rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kib) // 1024


def tokenless_flood(address: str, count: int, mib: int) -> list[grpc.StatusCode]:
    """`count` concurrent tokenless Execute calls of `mib` MiB each; their status codes."""
    body = spb.ExecuteRequest(files={"big.bin": b"x" * (mib << 20)},
                              command=["true"]).SerializeToString()
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", (mib + 1) << 20)])
    call = channel.unary_stream(EXECUTE)

    def one(_: int) -> grpc.StatusCode:
        try:
            list(call(body, timeout=120))
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(count) as pool:
        codes = list(pool.map(one, range(count)))
    channel.close()
    return codes


def flood_growth(tmp_path: Path, mode: str) -> int:
    with controller_process(tmp_path, mode) as (pid, address):
        stubs = Stubs(address)
        assert stubs.health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        before = peak_rss_mib(pid)
        codes = tokenless_flood(address, count=3, mib=120)
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
        # Still healthy, and a caller with the token is served.
        assert stubs.health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        listed = stubs.runs.ListRuns(rpb.ListRunsRequest(),
                                     metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert list(listed.runs) == []
        return peak_rss_mib(pid) - before


def test_deny_tokenless_large_requests_are_refused_before_reading(tmp_path: Path) -> None:
    # 360 MiB sent without a token; the body is never read, so the peak barely moves
    # (measured: +17 MiB for six 280 MB requests; before the fix +4.2 GiB).
    growth = flood_growth(tmp_path, "refuse-before-read")
    assert growth < 100, f"peak RSS grew {growth} MiB"


def test_sensitivity_tokenless_bodies_cost_memory_when_read_before_refusing(
        tmp_path: Path) -> None:
    """Twin: with the refusal after the read (the old order), the same flood moves the
    server's peak RSS by at least one body."""
    growth = flood_growth(tmp_path, "read-then-refuse")
    assert growth > 120, f"peak RSS grew only {growth} MiB"


def _methods() -> list[tuple[str, bool, bool]]:
    """(path, request streaming, response streaming) of every method the server offers
    (ours, health and reflection)."""
    from grpc_reflection.v1alpha import reflection_pb2

    out = []
    for file in (rpb.DESCRIPTOR, spb.DESCRIPTOR, health_pb2.DESCRIPTOR,
                 reflection_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                out.append((f"/{service.full_name}/{method.name}",
                            method.client_streaming, method.server_streaming))
    out.append((f"/{reflection.V1}/{reflection.METHOD}", True, True))  # same messages
    return out


def _call(channel: grpc.Channel, method: tuple[str, bool, bool], body: bytes,
          metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    path, request_streaming, response_streaming = method
    with pytest.raises(grpc.RpcError) as info:
        if request_streaming:
            list(channel.stream_stream(path)(iter([body]), metadata=metadata, timeout=30))
        elif response_streaming:
            list(channel.unary_stream(path)(body, metadata=metadata, timeout=30))
        else:
            channel.unary_unary(path)(body, metadata=metadata, timeout=30)
    return info.value


def test_deny_malformed_bytes_to_every_method(tmp_path: Path) -> None:
    methods = _methods()
    assert len(methods) >= 13
    bearer = (("authorization", f"Bearer {TOKEN}"),)
    with serving(tmp_path / "auth", None, docker_url=NO_DOCKER, tokens=(TOKEN,)) as server:
        channel = grpc.insecure_channel(server.address)
        for method in methods:
            tokenless = _call(channel, method, MALFORMED, ())
            expected = (grpc.StatusCode.INVALID_ARGUMENT if "grpc.health" in method[0]
                        else grpc.StatusCode.UNAUTHENTICATED)
            assert tokenless.code() == expected, method
            error = _call(channel, method, MALFORMED, bearer)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
            assert "request" in field_violations(error), method
            assert "not a valid message" in (error.details() or "")
        # Well-framed but invalid: a string field (run_id) that is not UTF-8.
        error = _call(channel, ("/bilevel.v1.RunService/GetRun", False, False),
                      b"\x0a\x02\xff\xfe", bearer)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in (error.details() or "")
    with serving(tmp_path / "open", None, docker_url=NO_DOCKER) as server:  # no tokens
        channel = grpc.insecure_channel(server.address)
        for method in methods:
            error = _call(channel, method, MALFORMED, ())
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)


def test_deny_oversize_request_to_a_small_method(tmp_path: Path) -> None:
    # A valid ListRunsRequest padded with an unknown field, just over the small cap.
    padding = b"x" * DEFAULT_CAP_BYTES
    body = bytes([0x7A]) + _varint(len(padding)) + padding  # field 15, length-delimited
    rpb.ListRunsRequest.FromString(body)  # parses: only its size is wrong
    with serving(tmp_path, None, docker_url=NO_DOCKER, tokens=(TOKEN,)) as server:
        channel = grpc.insecure_channel(server.address)
        error = _call(channel, ("/bilevel.v1.RunService/ListRuns", False, False), body,
                      (("authorization", f"Bearer {TOKEN}"),))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"exceeds the {DEFAULT_CAP_BYTES} byte cap" in (error.details() or "")
        status = rpc_status.from_call(error)
        assert status is not None
        quota = error_details_pb2.QuotaFailure()
        assert status.details[0].Unpack(quota)
        assert quota.violations[0].subject == "request_bytes"
        # The same request under the cap is served.
        small = rpb.ListRunsRequest().SerializeToString()
        assert channel.unary_unary("/bilevel.v1.RunService/ListRuns")(
            small, metadata=(("authorization", f"Bearer {TOKEN}"),)) == b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.docker
def test_deny_execute_choosing_a_gpu_on_a_controller_without_gpu_slots(
        tmp_path: Path, sandbox_image: str) -> None:
    request = spb.ExecuteRequest(files={"main.py": b"print(1)"},
                                 command=["python3", "main.py"], gpu_ids=["0"])
    with serving(tmp_path, sandbox_image) as server, pytest.raises(grpc.RpcError) as info:
        list(Stubs(server.address).sandbox.Execute(request, timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no GPU slots" in field_violations(info.value)["gpu_ids"]


# -- data_mounts: only volumes published to this controller's clients (finding 10) --------

SECRET = "validation-split-secret"


def _read_request(volume: str, runtime: str = "runc") -> spb.ExecuteRequest:
    return spb.ExecuteRequest(
        files={"main.py": b"print(open('/data/in/val.bin').read())"},
        command=["python3", "main.py"], runtime=enums.to_enum(enums.RUNTIMES, runtime),
        data_mounts=[spb.DataMount(volume=volume, target="/data/in")])


@pytest.fixture
def data_volumes(docker_client: docker.DockerClient, sandbox_image: str,
                 tmp_path: Path) -> Iterator[dict[str, str]]:
    """A stand-in validation split (made the way the trainer task makes it), a plain Docker
    volume, and one published volume in this test's namespace and one in another."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "val.bin").write_text(SECRET)
    tag = uuid.uuid4().hex[:8]
    namespace = f"pytest-api-{tag}"
    made = {
        "namespace": namespace,
        "val_split": ensure_data_volume(docker_client, f"bilevel-data-test{tag}-val",
                                        folder, sandbox_image),
        "plain": docker_client.volumes.create(f"bilevel-test-plain-{tag}").name,
        "foreign": publish_data_volume(docker_client, f"other-{tag}", folder, sandbox_image,
                                       "shared"),
        "own": publish_data_volume(docker_client, namespace, folder, sandbox_image, "shared"),
    }
    try:
        yield made
    finally:
        for key in ("val_split", "plain", "foreign", "own"):
            name = made[key]
            name = name if not name.startswith("data-") else f"bilevel-{name}"
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.volumes.get(name).remove(force=True)


@pytest.mark.docker
def test_deny_data_mounts_of_volumes_not_published_to_clients(
        tmp_path: Path, sandbox_image: str, data_volumes: dict[str, str]) -> None:
    refused = [data_volumes["val_split"], data_volumes["plain"], data_volumes["foreign"],
               "data-" + "0" * 20, f"bilevel-{data_volumes['own']}"]
    with serving(tmp_path / "state", sandbox_image,
                 namespace=data_volumes["namespace"]) as server:
        stubs = Stubs(server.address)
        for volume in refused:
            with pytest.raises(grpc.RpcError) as info:
                list(stubs.sandbox.Execute(_read_request(volume), timeout=60))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, volume
            why = field_violations(info.value)["data_mounts[0].volume"]
            assert "not a data volume published to clients" in why, why
        # The id this controller's namespace published is mounted, read-only.
        events = list(stubs.sandbox.Execute(_read_request(data_volumes["own"], "runsc"),
                                            timeout=120))
    result = events[-1].finished.result
    assert result.status == spb.JOB_STATUS_OK, result
    assert SECRET in result.stdout_head


@pytest.mark.docker
def test_sensitivity_unchecked_data_mounts_read_the_validation_split(
        tmp_path: Path, sandbox_image: str, data_volumes: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: with a backend that takes a request's data mounts as they are (no id check,
    no resolution), a request mounts the validation split by its Docker name and reads
    it."""
    monkeypatch.setattr(convert, "check_data_ids", lambda _spec: None)
    monkeypatch.setattr(DockerExecutor, "resolve_data", lambda _self, spec, _principal: spec)
    with serving(tmp_path / "state", sandbox_image,
                 namespace=data_volumes["namespace"]) as server:
        events = list(Stubs(server.address).sandbox.Execute(
            _read_request(data_volumes["val_split"]), timeout=120))
    result = events[-1].finished.result
    assert result.status == spb.JOB_STATUS_OK, result
    assert SECRET in result.stdout_head
