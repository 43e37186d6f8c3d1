"""Server reflection over a real socket, as grpcurl-style clients use it: v1 and v1alpha
both answer, the descriptors are complete (they build a pool) and carry the proto's
comments, so `describe` shows documentation."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from controller.api import reflection
from tests.test_api_harness import serving

VERSIONS = [reflection.V1, reflection.V1ALPHA]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    state = tmp_path_factory.mktemp("reflection")
    with serving(state, None, docker_url="unix:///nonexistent/docker.sock") as server, \
            grpc.insecure_channel(server.address) as chan:
        yield chan


def _ask(channel: grpc.Channel, version: str,
         *requests: rpb.ServerReflectionRequest) -> list[rpb.ServerReflectionResponse]:
    call = channel.stream_stream(
        f"/{version}/{reflection.METHOD}",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=30))


def _files(response: rpb.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response
    return [descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto]


def _comment(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    for location in file.source_code_info.location:
        if list(location.path) == path:
            return str(location.leading_comments + location.trailing_comments)
    return ""


@pytest.mark.parametrize("version", VERSIONS)
def test_both_versions_list_every_service_including_themselves(
        channel: grpc.Channel, version: str) -> None:
    (reply,) = _ask(channel, version, rpb.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert names == {"bilevel.v1.SandboxService", "bilevel.v1.RunService",
                     "bilevel.v1.MemoryService", "bilevel.v1.PrincipalService",
                     "grpc.health.v1.Health",
                     reflection.V1, reflection.V1ALPHA}


@pytest.mark.parametrize("version", VERSIONS)
def test_describe_a_service_gives_a_complete_set_with_the_comments(
        channel: grpc.Channel, version: str) -> None:
    (reply,) = _ask(channel, version, rpb.ServerReflectionRequest(
        file_containing_symbol="bilevel.v1.RunService"))
    files = _files(reply)
    assert files[0].name == "bilevel/v1/runs.proto"
    pool = descriptor_pool.DescriptorPool()
    by_name = {f.name: f for f in files}
    added: set[str] = set()

    def add(name: str) -> None:  # dependencies first, as a client builds its pool
        if name not in added:
            for dep in by_name[name].dependency:
                add(dep)
            pool.Add(by_name[name])
            added.add(name)

    add("bilevel/v1/runs.proto")
    create = pool.FindServiceByName("bilevel.v1.RunService").FindMethodByName("CreateRun")
    assert create.input_type.full_name == "bilevel.v1.CreateRunRequest"
    runs = by_name["bilevel/v1/runs.proto"]
    service = [s.name for s in runs.service].index("RunService")
    method = [m.name for m in runs.service[service].method].index("CreateRun")
    assert "Start a run" in _comment(runs, [6, service, 2, method])  # service.method
    assert "authorization: Bearer <token>" in _comment(runs, [12])  # the syntax line
    trial = [m.name for m in runs.message_type].index("Run")
    fields = [f.name for f in runs.message_type[trial].field]
    assert "baseline (trial 0) included" in _comment(
        runs, [4, trial, 2, fields.index("trials_done")])


@pytest.mark.parametrize(("symbol", "file"), [
    ("bilevel.v1.RunService.CreateRun", "bilevel/v1/runs.proto"),
    ("bilevel.v1.RunEvent.TrialFinished", "bilevel/v1/runs.proto"),
    ("bilevel.v1.RUNTIME_RUNSC", "bilevel/v1/sandbox.proto"),
    ("bilevel.v1.ExecuteEvent.Output.Stream", "bilevel/v1/sandbox.proto"),
    ("bilevel.v1.PrincipalService.RevokeToken", "bilevel/v1/principals.proto"),
    ("grpc.health.v1.Health", "grpc_health/v1/health.proto"),
    (reflection.V1, "grpc/reflection/v1/reflection.proto"),
])
def test_symbols_resolve_to_their_file(channel: grpc.Channel, symbol: str, file: str) -> None:
    (reply,) = _ask(channel, reflection.V1,
                    rpb.ServerReflectionRequest(file_containing_symbol=symbol))
    assert _files(reply)[0].name == file


def test_the_principal_service_is_described_with_its_comments(channel: grpc.Channel) -> None:
    (reply,) = _ask(channel, reflection.V1, rpb.ServerReflectionRequest(
        file_containing_symbol="bilevel.v1.PrincipalService"))
    file = _files(reply)[0]
    methods = [m.name for m in file.service[0].method]
    assert methods == ["WhoAmI", "CreateToken", "ListPrincipals", "RevokeToken"]
    assert "Admin only" in _comment(file, [6, 0, 2, methods.index("RevokeToken")])


def test_reflection_v1_describes_itself_in_its_own_package(channel: grpc.Channel) -> None:
    (reply,) = _ask(channel, reflection.V1, rpb.ServerReflectionRequest(
        file_containing_symbol=reflection.V1))
    (file,) = _files(reply)
    assert file.package == "grpc.reflection.v1"
    (method,) = file.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)  # self-contained: every type it names is its own
    assert pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")


def test_unknown_names_are_not_found_and_one_stream_answers_in_order(
        channel: grpc.Channel) -> None:
    replies = _ask(channel, reflection.V1ALPHA,
                   rpb.ServerReflectionRequest(file_containing_symbol="bilevel.v1.Nope"),
                   rpb.ServerReflectionRequest(file_by_filename="bilevel/v1/sandbox.proto"),
                   rpb.ServerReflectionRequest(file_by_filename="../etc/passwd"),
                   rpb.ServerReflectionRequest())
    assert replies[0].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert _files(replies[1])[0].name == "bilevel/v1/sandbox.proto"
    assert replies[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert replies[3].error_response.error_code == \
        grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_the_descriptor_set_matches_the_generated_modules() -> None:
    """The served descriptors are those the server's messages use (codegen --check keeps
    both generated from proto/), minus the comments."""
    from controller.api.gen.bilevel.v1 import runs_pb2

    served = reflection.load().files["bilevel/v1/runs.proto"]
    stripped = descriptor_pb2.FileDescriptorProto()
    stripped.CopyFrom(served)
    stripped.ClearField("source_code_info")
    for message in stripped.message_type:  # the python modules leave out json_name
        _clear_json_names(message)
    assert stripped == descriptor_pb2.FileDescriptorProto.FromString(
        runs_pb2.DESCRIPTOR.serialized_pb)


def _clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _clear_json_names(nested)
