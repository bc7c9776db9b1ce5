"""Health checking and server reflection, the same on both services.

Reflection is served under both names tools use: ``grpc.reflection.v1alpha`` (what
grpcio-reflection implements) and ``grpc.reflection.v1`` (what current grpcurl, Postman
and grpc-js tooling ask for first). The two protocols are the same messages under another
package name, so the v1alpha servicer answers v1 calls unchanged on the wire.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as wire

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_health_and_reflection(server: grpc.Server, *service_names: str) -> None:
    """Reports the services (and the server as a whole) SERVING, and serves reflection v1 and v1alpha."""
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service_name in service_names:
        health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=wire.ServerReflectionRequest.FromString,
        response_serializer=wire.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )
