"""Builds and runs the blob service's gRPC server."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mreg.blob.v1 import blob_service_pb2

from blob_service.config import BlobConfig
from blob_service.service import BlobStore
from blob_service.servicer import BlobServicer, add_to_server
from blob_service.storage import open_storage

log = logging.getLogger(__name__)

# Chunks are ~1 MiB and batches up to 32 MiB of data; leave room for framing.
MAX_MESSAGE_BYTES = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass
class RunningBlobServer:
    server: grpc.Server
    port: int
    store: BlobStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait()


def start(config: BlobConfig) -> RunningBlobServer:
    """Starts a blob server; returns once it listens."""
    store = BlobStore(
        open_storage(config.store),
        touch_interval=timedelta(seconds=config.touch_interval_seconds),
        min_gc_grace=timedelta(seconds=config.min_gc_grace_seconds),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), options=GRPC_OPTIONS)
    add_to_server(BlobServicer(store), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = blob_service_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name
    health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([service_name, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {config.listen}")
    server.start()
    log.info("blob service listening on port %d, storing in %r", port, store.storage)
    return RunningBlobServer(server, port, store)
