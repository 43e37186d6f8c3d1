"""Server reflection, v1 and v1alpha, answering with the descriptors' comments.

grpcio-reflection serves v1alpha only, and from descriptors without source_code_info, so
`grpcurl describe` and similar tools would show no documentation. This serves both
versions from the descriptor set codegen writes with --include_source_info. The two
versions' messages are the same on the wire (v1 is v1alpha renamed), so one handler
parses both; v1's own file descriptor is derived from v1alpha's by renaming the package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import FileDescriptorProto as FileProto
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from controller.api.codegen import DESCRIPTOR_SET, GEN_PACKAGE

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
METHOD = "ServerReflectionInfo"
_ALPHA_PACKAGE, _V1_PACKAGE = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def _v1_file(alpha: FileProto) -> FileProto:
    """reflection v1's file descriptor: v1alpha's with the package renamed."""
    out = FileProto()
    out.CopyFrom(alpha)
    out.name = "grpc/reflection/v1/reflection.proto"
    out.package = _V1_PACKAGE
    out.ClearField("options")
    old, new = f".{_ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."

    def rename(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                if field.type_name.startswith(old):
                    field.type_name = new + field.type_name[len(old):]
            rename(message.nested_type)

    rename(out.message_type)
    for service in out.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    return out


def _symbols(file: FileProto) -> Iterator[str]:
    """Every fully qualified name the file defines (what file_containing_symbol asks)."""
    prefix = f"{file.package}." if file.package else ""

    def enums(scope: str, found: Iterable[descriptor_pb2.EnumDescriptorProto]) -> Iterator[str]:
        for enum in found:
            yield scope + enum.name
            for value in enum.value:  # values live in the enum's enclosing scope
                yield scope + value.name

    def messages(scope: str,
                 found: Iterable[descriptor_pb2.DescriptorProto]) -> Iterator[str]:
        for message in found:
            name = scope + message.name
            yield name
            yield from (f"{name}.{field.name}" for field in message.field)
            yield from (f"{name}.{oneof.name}" for oneof in message.oneof_decl)
            yield from enums(f"{name}.", message.enum_type)
            yield from messages(f"{name}.", message.nested_type)

    yield from messages(prefix, file.message_type)
    yield from enums(prefix, file.enum_type)
    for service in file.service:
        yield prefix + service.name
        yield from (f"{prefix}{service.name}.{m.name}" for m in service.method)


class Descriptors:
    """File descriptors by name and the file defining each symbol."""

    def __init__(self, files: Iterable[FileProto]) -> None:
        self.files: dict[str, FileProto] = {}
        self.symbols: dict[str, str] = {}
        for file in files:
            if file.name in self.files:
                continue
            self.files[file.name] = file
            self.symbols.update(dict.fromkeys(_symbols(file), file.name))
        self._serialized = {name: f.SerializeToString() for name, f in self.files.items()}

    def with_dependencies(self, name: str) -> list[bytes]:
        """The file and every file it imports, transitively, each once."""
        order: list[str] = []
        pending = [name]
        while pending:
            current = pending.pop()
            if current in order or current not in self.files:
                continue
            order.append(current)
            pending.extend(self.files[current].dependency)
        return [self._serialized[n] for n in order]


def load() -> Descriptors:
    """Ours with comments (codegen's descriptor set, its imports included), then health
    and reflection (both versions) from the installed modules."""
    data = resources.files(GEN_PACKAGE).joinpath(DESCRIPTOR_SET).read_bytes()
    ours = descriptor_pb2.FileDescriptorSet.FromString(data).file
    alpha = FileProto.FromString(rpb.DESCRIPTOR.serialized_pb)
    return Descriptors([*ours, FileProto.FromString(health_pb2.DESCRIPTOR.serialized_pb),
                        alpha, _v1_file(alpha)])


def _error(request: rpb.ServerReflectionRequest, code: grpc.StatusCode,
           message: str) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(
        original_request=request,
        error_response=rpb.ErrorResponse(error_code=code.value[0], error_message=message))


class ReflectionServicer:
    """Answers ServerReflectionInfo for both versions from one Descriptors."""

    def __init__(self, descriptors: Descriptors, service_names: Sequence[str]) -> None:
        self.descriptors = descriptors
        self.service_names = sorted(service_names)

    def answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        d = self.descriptors
        if kind == "list_services":
            return rpb.ServerReflectionResponse(
                original_request=request, list_services_response=rpb.ListServiceResponse(
                    service=[rpb.ServiceResponse(name=n) for n in self.service_names]))
        if kind in ("file_by_filename", "file_containing_symbol"):
            key = getattr(request, kind)
            name = key if kind == "file_by_filename" else d.symbols.get(key)
            if name is None or name not in d.files:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"{key!r} is not known")
            return rpb.ServerReflectionResponse(
                original_request=request, file_descriptor_response=rpb.FileDescriptorResponse(
                    file_descriptor_proto=d.with_dependencies(name)))
        if kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            if name not in d.symbols:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"{name!r} is not known")
            return rpb.ServerReflectionResponse(  # no file here declares extensions
                original_request=request, all_extension_numbers_response=(
                    rpb.ExtensionNumberResponse(base_type_name=name)))
        if kind == "file_containing_extension":
            return _error(request, grpc.StatusCode.NOT_FOUND, "no extensions are defined")
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request kind set")

    async def info(self, requests: AsyncIterator[rpb.ServerReflectionRequest],
                   context: Any) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection v1 and v1alpha; both list themselves among `service_names`."""
    servicer = ReflectionServicer(load(), [*service_names, V1, V1ALPHA])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.info, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(name, {METHOD: handler})
        for name in (V1, V1ALPHA)))
