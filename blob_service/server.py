"""Builds and runs the blob service's gRPC server."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

import grpc

from mreg.blob.v1 import blob_service_pb2
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.errors import ERROR_DOMAIN
from mreg.blob_service.service import BlobStore
from mreg.blob_service.servicer import BlobServicer, add_to_server
from mreg.blob_service.storage import open_storage
from mreg.server_runtime import runtime, streams, transport

log = logging.getLogger(__name__)

# Chunks are ~1 MiB and batches up to 32 MiB of data; leave room for framing.
MAX_MESSAGE_BYTES = 64 << 20
# Framing of a batch beyond its data: up to 10 000 digests and statuses of ~100 bytes.
BATCH_FRAMING_BYTES = 2 << 20


def message_limit(config: BlobConfig) -> int:
    """The largest message the server receives and sends: room for a full batch and its framing."""
    return max(MAX_MESSAGE_BYTES, config.max_batch_total_size_bytes + BATCH_FRAMING_BYTES)


def grpc_options(config: BlobConfig) -> list[tuple[str, int]]:
    limit = message_limit(config)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


@dataclass
class RunningBlobServer:
    server: grpc.Server
    port: int
    store: BlobStore
    stopping: threading.Event
    idle_streams: streams.IdleStreams
    admission: streams.StreamAdmission

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.stopping.set()
        self.server.stop(grace).wait()
        self.idle_streams.stop()


def start(config: BlobConfig) -> RunningBlobServer:
    """Starts a blob server; returns once it listens.

    Raises:
        transport.TransportConfigError: the TLS settings are incomplete or unreadable, or ``listen``
            is not a loopback address and the loopback rule refuses it.
    """
    credentials = transport.server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
    # Authentication is not built yet, so every caller is unauthenticated.
    transport.check_listen_address(
        config.listen,
        authenticated=False,
        insecure=config.insecure,
        tls=credentials is not None,
        insecure_flag="--insecure (env MREG_BLOB_INSECURE=1)",
    )
    store = BlobStore(
        open_storage(config.store),
        touch_interval=timedelta(seconds=config.touch_interval_seconds),
        min_gc_grace=timedelta(seconds=config.min_gc_grace_seconds),
        upload_expiry=timedelta(seconds=config.upload_expiry_seconds),
        max_batch_bytes=config.max_batch_total_size_bytes,
    )
    idle_streams = streams.IdleStreams(
        config.stream_idle_timeout_seconds,
        grpc.StatusCode.ABORTED,
        "--stream-idle-timeout-seconds, env MREG_BLOB_STREAM_IDLE_TIMEOUT_SECONDS",
        ERROR_DOMAIN,
    )
    idle = timedelta(seconds=config.stream_idle_timeout_seconds) if config.stream_idle_timeout_seconds > 0 else None
    capabilities = store.capabilities(message_limit(config), idle)
    started = runtime.start_server(
        listen=config.listen,
        workers=config.workers,
        max_streams=config.max_streams,
        max_streams_setting="--max-streams, env MREG_BLOB_MAX_STREAMS",
        thread_name="blob-rpc",
        options=grpc_options(config),
        add_servicers=lambda server: add_to_server(BlobServicer(store, idle_streams, capabilities), server),
        service_name=blob_service_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
        error_domain=ERROR_DOMAIN,
        credentials=credentials,
    )
    stopping = threading.Event()
    if config.janitor_interval_seconds > 0:
        threading.Thread(target=_janitor, args=(store, config, stopping), name="blob-janitor", daemon=True).start()
    log.info(
        "blob service listening on port %d (%s), storing in %r",
        started.port,
        transport.describe(cert=config.tls_cert, client_ca=config.tls_client_ca),
        store.storage,
    )
    return RunningBlobServer(started.server, started.port, store, stopping, idle_streams, started.admission)


def _janitor(store: BlobStore, config: BlobConfig, stopping: threading.Event) -> None:
    """Discards partial uploads abandoned for longer than the expiry, until the server stops."""
    while not stopping.wait(config.janitor_interval_seconds):
        try:
            store.expire_uploads()
        except Exception:  # the janitor must outlive a storage hiccup
            log.exception("expiring abandoned uploads failed; retrying in %.0f s", config.janitor_interval_seconds)
