"""Tools find their way around both services: health checks and server reflection v1 and v1alpha."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as wire

from mreg.metadata.v1 import metadata_service_pb2 as pb

SERVICES = {"metadata": "mreg.metadata.v1.MetadataService", "blob": "mreg.blob.v1.BlobService"}


def _reflect(address: str, package: str, request: wire.ServerReflectionRequest) -> wire.ServerReflectionResponse:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=wire.ServerReflectionRequest.SerializeToString,
            response_deserializer=wire.ServerReflectionResponse.FromString,
        )
        return next(iter(call(iter([request]), timeout=10)))


@pytest.mark.parametrize("package", ["v1", "v1alpha"])
@pytest.mark.parametrize("which", ["metadata", "blob"])
def test_reflection_lists_the_service_and_describes_it(servers, which: str, package: str) -> None:
    address = servers.metadata.address if which == "metadata" else servers.blob.address
    listed = _reflect(address, package, wire.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert SERVICES[which] in names and "grpc.health.v1.Health" in names

    found = _reflect(address, package, wire.ServerReflectionRequest(file_containing_symbol=SERVICES[which]))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    assert any(s.name == SERVICES[which].rsplit(".", 1)[1] for f in files for s in f.service)


@pytest.mark.parametrize("which", ["metadata", "blob"])
def test_health_reports_each_service_serving(servers, which: str) -> None:
    address = servers.metadata.address if which == "metadata" else servers.blob.address
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICES[which]):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_reference_without_entity_names_the_request_header_to_send(metadata_stub) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        metadata_stub.GetArtifact(pb.GetArtifactRequest(name="resnet"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mreg-entity request header" in missing.value.details()
    assert "MREG_" not in missing.value.details()
