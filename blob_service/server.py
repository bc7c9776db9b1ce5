"""Builds and runs the blob service's gRPC server."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc

from mreg.blob.v1 import blob_service_pb2
from mreg.blob_service.authorization import IntrospectingAuthenticator, authorize
from mreg.blob_service.config import BlobConfig
from mreg.blob_service.errors import ERROR_DOMAIN
from mreg.blob_service.metrics import BlobMetrics
from mreg.blob_service.scrub import Scrubber
from mreg.blob_service.service import BlobStore
from mreg.blob_service.servicer import BlobServicer, add_to_server
from mreg.blob_service.storage import open_storage
from mreg.client.channels import Credentials
from mreg.server_runtime import runtime, streams, transport
from mreg.server_runtime.auth import AuthInterceptor
from mreg.server_runtime.metrics import (
    MetricsEndpoint,
    RpcObserver,
    ServiceMetrics,
    serve_metrics,
)
from mreg.server_runtime.principals import read_or_create_secret_file

log = logging.getLogger(__name__)

# Chunks are ~1 MiB and batches up to 32 MiB of data; leave room for framing.
MAX_MESSAGE_BYTES = 64 << 20
# Framing of a batch beyond its data: up to 10 000 digests and statuses of ~100 bytes.
BATCH_FRAMING_BYTES = 2 << 20
# The scrub thread looks this often whether a scrub is due (the lease in the store records when the
# last one completed, on any replica), so a restart or a replica that died postpones a scrub by at
# most this much; the first look is this long after start-up.
SCRUB_CHECK_SECONDS = 3600.0
# --stream-window-bytes, when set: at least HTTP/2's default window, at most the largest it can announce.
MIN_STREAM_WINDOW_BYTES = 64 << 10
MAX_STREAM_WINDOW_BYTES = (1 << 31) - 1


def message_limit(config: BlobConfig) -> int:
    """The largest message the server receives and sends: room for a full batch and its framing."""
    return max(MAX_MESSAGE_BYTES, config.max_batch_total_size_bytes + BATCH_FRAMING_BYTES)


def grpc_options(config: BlobConfig) -> list[tuple[str, int]]:
    limit = message_limit(config)
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    if config.stream_window_bytes:
        # gRPC otherwise sizes each stream's window from the bandwidth-delay product it probes, at 4-16 MiB
        # even on loopback: 128 pushes at once held 1.4-3.6 GB here, as the service stores chunks more
        # slowly than they arrive. A fixed window bounds that (0.6 GB at 1 MiB, 1 GB at 4 MiB) with the same
        # aggregate throughput. One stream alone pushed 3-6% slower at 1-2 MiB than with gRPC's window, as
        # fast at 4 MiB: the default takes the tighter bound.
        options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", config.stream_window_bytes)]
    return options


def check_stream_window(window: int) -> None:
    """Raises StartupError for a window below HTTP/2's default or above the largest it can announce."""
    if window != 0 and not MIN_STREAM_WINDOW_BYTES <= window <= MAX_STREAM_WINDOW_BYTES:
        raise transport.StartupError(
            f"--stream-window-bytes {window} is out of range: give 0 (gRPC sizes the window) or "
            f"{MIN_STREAM_WINDOW_BYTES} to {MAX_STREAM_WINDOW_BYTES} bytes"
        )


@dataclass
class RunningBlobServer:
    server: grpc.Server
    port: int
    store: BlobStore
    scrubber: Scrubber
    stopping: threading.Event
    idle_streams: streams.IdleStreams
    admission: streams.StreamAdmission
    metrics: ServiceMetrics
    blob_metrics: BlobMetrics
    # The Prometheus endpoint (--metrics-listen), or None.
    metrics_endpoint: MetricsEndpoint | None = None
    # Where tokens are checked (with --auth); settable, as the metadata service may start later.
    metadata_addr: str = ""
    authenticator: IntrospectingAuthenticator | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.stopping.set()
        self.server.stop(grace).wait()
        self.idle_streams.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        if self.authenticator is not None:
            self.authenticator.close()


def start(config: BlobConfig) -> RunningBlobServer:
    """Starts a blob server; returns once it listens.

    Raises:
        transport.TransportConfigError: the TLS settings are incomplete or unreadable, or ``listen``
            is not a loopback address and the loopback rule refuses it.
        transport.StartupError: ``stream_window_bytes`` is out of range, or ``listen`` cannot be bound.
    """
    check_stream_window(config.stream_window_bytes)
    credentials = transport.server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
    runtime.check_addresses(
        config.listen,
        config.metrics_listen,
        authenticated=config.auth,
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
    running: list[RunningBlobServer] = []
    authenticator = None
    interceptors = []
    if config.auth:
        authenticator = IntrospectingAuthenticator(
            lambda: running[0].metadata_addr,
            read_or_create_secret_file(Path(config.service_token_file)),
            config.auth_cache_seconds,
            Credentials(
                ca_cert=_read(config.metadata_ca_cert),
                client_cert=_read(config.metadata_client_cert),
                client_key=_read(config.metadata_client_key),
            ),
        )
        interceptors.append(AuthInterceptor(authenticator, authorize, ERROR_DOMAIN))
    metrics = ServiceMetrics("blob")
    blob_metrics = BlobMetrics(metrics)
    store.storage.count_requests(blob_metrics.store_request)
    started = runtime.start_server(
        listen=config.listen,
        workers=config.workers,
        max_streams=config.max_streams,
        max_streams_setting="--max-streams, env MREG_BLOB_MAX_STREAMS",
        thread_name="blob-rpc",
        options=grpc_options(config),
        add_servicers=lambda server: add_to_server(
            BlobServicer(store, idle_streams, capabilities, blob_metrics), server
        ),
        service_name=blob_service_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
        error_domain=ERROR_DOMAIN,
        interceptors=interceptors,
        credentials=credentials,
        observer=RpcObserver(metrics, track_principal=config.auth),
        max_connection_age_seconds=config.max_connection_age_seconds,
    )
    try:
        endpoint = serve_metrics(config.metrics_listen, metrics.registry) if config.metrics_listen else None
    except BaseException:
        started.server.stop(None)
        raise
    stopping = threading.Event()
    if config.janitor_interval_seconds > 0:
        threading.Thread(
            target=_janitor, args=(store, config, stopping, blob_metrics), name="blob-janitor", daemon=True
        ).start()
    scrubber = Scrubber(store.storage, bytes_per_second=config.scrub_bytes_per_second, observer=blob_metrics.scrub)
    if config.scrub_interval_seconds > 0:
        threading.Thread(
            target=_scrub_periodically,
            args=(scrubber, config, stopping, blob_metrics),
            name="blob-scrub",
            daemon=True,
        ).start()
    log.info(
        "blob service listening on port %d (%s), storing in %r",
        started.port,
        transport.describe(cert=config.tls_cert, client_ca=config.tls_client_ca),
        store.storage,
    )
    if endpoint is not None:
        log.info("blob service metrics at http://%s/metrics", endpoint.address)
    running.append(
        RunningBlobServer(
            started.server,
            started.port,
            store,
            scrubber,
            stopping,
            idle_streams,
            started.admission,
            metrics,
            blob_metrics,
            endpoint,
            metadata_addr=config.metadata_addr,
            authenticator=authenticator,
        )
    )
    return running[0]


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _janitor(store: BlobStore, config: BlobConfig, stopping: threading.Event, metrics: BlobMetrics) -> None:
    """Discards partial uploads abandoned for longer than the expiry, until the server stops."""
    while not stopping.wait(config.janitor_interval_seconds):
        try:
            metrics.upload_parts_expired.inc(store.expire_uploads())
        except Exception:  # the janitor must outlive a storage hiccup
            log.exception("expiring abandoned uploads failed; retrying in %.0f s", config.janitor_interval_seconds)


def _scrub_periodically(
    scrubber: Scrubber, config: BlobConfig, stopping: threading.Event, metrics: BlobMetrics
) -> None:
    """Scrubs the store once per interval (across replicas sharing it), until the server stops."""
    check = min(config.scrub_interval_seconds, SCRUB_CHECK_SECONDS)
    while not stopping.wait(check):
        try:
            report = scrubber.run_if_due(config.scrub_interval_seconds, stopping)
        except Exception:  # the scrub must outlive a storage hiccup
            metrics.scrub.failed()
            log.exception("scrubbing the blob store failed; trying again in %.0f s", check)
            continue
        if report is not None:
            metrics.scrub.finished(report)
