"""Builds and runs the metadata service's gRPC server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from mreg.metadata.v1 import metadata_service_pb2, token_service_pb2
from mreg.metadata_service.authorization import TokenAuthenticator, authorize
from mreg.metadata_service.blob_client import BlobServiceClient
from mreg.metadata_service.catalog import MetadataCatalog
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.db import create_database_engine, upgrade_schema
from mreg.metadata_service.errors import ERROR_DOMAIN, FailedPrecondition
from mreg.metadata_service.metrics import MetadataMetrics
from mreg.metadata_service.models import utcnow
from mreg.metadata_service.servicer import MetadataServicer, add_to_server
from mreg.metadata_service.token_servicer import TokenServicer
from mreg.metadata_service.token_servicer import add_to_server as add_token_servicer
from mreg.metadata_service.unit_of_work import Database
from mreg.server_runtime import runtime, streams, transport
from mreg.server_runtime.auth import AuthInterceptor
from mreg.server_runtime.metrics import (
    MetricsEndpoint,
    RpcObserver,
    ServiceMetrics,
    serve_metrics,
)
from mreg.server_runtime.principals import read_or_create_secret_file, write_secret_file

log = logging.getLogger(__name__)

# Manifests of very many files travel in one CommitVersion message.
MAX_MESSAGE_BYTES = 256 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass
class RunningMetadataServer:
    server: grpc.Server
    port: int
    engine: Engine
    database: Database
    content: BlobServiceClient
    catalog: MetadataCatalog
    stopping: threading.Event
    admission: streams.StreamAdmission
    metrics: ServiceMetrics
    metadata_metrics: MetadataMetrics
    # The Prometheus endpoint (--metrics-listen), or None.
    metrics_endpoint: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.stopping.set()
        self.server.stop(grace).wait()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self.catalog.stop()
        self.content.close()
        self.database.close()


def _open_database(config: MetadataConfig) -> Engine:
    """The engine for ``--database-url``, the schema upgraded unless told not to.

    Raises:
        transport.StartupError: the URL is malformed, or the database cannot be reached or upgraded.
    """
    try:
        shown = make_url(config.database_url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError) as e:  # not echoed: it may hold a password
        raise transport.StartupError(
            f"cannot use the database given by --database-url, which is not a URL such as sqlite:///PATH or "
            f"postgresql://USER@HOST:PORT/NAME ({e})"
        ) from e
    try:
        engine = create_database_engine(config.database_url)
        if config.migrate:
            upgrade_schema(engine)
        return engine
    except OSError as e:  # SQLite's directory or lock file
        raise transport.StartupError(f"cannot use the database {shown}: {e.strerror or e}: {e.filename}") from e
    except (ArgumentError, DBAPIError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise transport.StartupError(f"cannot use the database {shown}: {reason}") from e


def start(config: MetadataConfig) -> RunningMetadataServer:
    """Starts a metadata server (upgrading the schema first unless told not to).

    Raises:
        transport.TransportConfigError: the TLS settings (its own or the blob connection's) are
            incomplete or unreadable, or ``listen`` is not a loopback address and the loopback rule
            refuses it.
        transport.StartupError: the database cannot be used, or ``listen`` or the metrics address bound.
    """
    credentials = transport.server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
    blob_credentials = transport.channel_credentials(
        tls=config.blob_tls,
        ca_cert=config.blob_ca_cert,
        client_cert=config.blob_client_cert,
        client_key=config.blob_client_key,
        flag_prefix="--blob",
    )
    runtime.check_addresses(
        config.listen,
        config.metrics_listen,
        authenticated=config.auth,
        insecure=config.insecure,
        tls=credentials is not None,
        insecure_flag="--insecure (env MREG_METADATA_INSECURE=1)",
    )
    service_secret = read_or_create_secret_file(Path(config.service_token_file)) if config.auth else None
    # Before the database: a malformed --blob-addr is refused without waiting on a database first.
    content = BlobServiceClient(config.blob_addr, credentials=blob_credentials, token=service_secret)
    try:
        engine = _open_database(config)
    except BaseException:
        content.close()
        raise
    database = Database(engine)
    catalog = MetadataCatalog(
        database,
        content,
        pending_ttl=timedelta(seconds=config.pending_ttl_seconds),
        content_check_cache=timedelta(seconds=config.content_check_cache_seconds),
    )
    metrics = ServiceMetrics("metadata")
    metadata_metrics = MetadataMetrics(metrics)
    metadata_metrics.observe(engine, database, catalog)
    interceptors = []
    if config.auth:
        _bootstrap_admin(catalog, Path(config.admin_token_file))
        authenticate = TokenAuthenticator(catalog.tokens, service_secret, config.auth_cache_seconds)
        interceptors.append(AuthInterceptor(authenticate, authorize, ERROR_DOMAIN))

    def add_servicers(server: grpc.Server) -> None:
        add_to_server(MetadataServicer(catalog), server)
        add_token_servicer(TokenServicer(catalog.tokens, config.auth), server)

    stopping = threading.Event()
    threading.Thread(
        target=_janitor, args=(catalog, config, stopping, metadata_metrics), name="mreg-janitor", daemon=True
    ).start()
    started = runtime.start_server(
        listen=config.listen,
        workers=config.workers,
        max_streams=config.max_streams,
        max_streams_setting="--max-streams, env MREG_METADATA_MAX_STREAMS",
        thread_name="metadata-rpc",
        options=GRPC_OPTIONS,
        add_servicers=add_servicers,
        service_name=metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name,
        more_service_names=[token_service_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name],
        error_domain=ERROR_DOMAIN,
        interceptors=interceptors,
        credentials=credentials,
        observer=RpcObserver(metrics, track_principal=config.auth),
        max_connection_age_seconds=config.max_connection_age_seconds,
    )
    port = started.port
    try:
        endpoint = serve_metrics(config.metrics_listen, metrics.registry) if config.metrics_listen else None
    except BaseException:
        stopping.set()
        started.server.stop(None)
        raise
    log.info(
        "metadata service listening on port %d (%s; database %s; blob service %s over %s)",
        port,
        transport.describe(cert=config.tls_cert, client_ca=config.tls_client_ca),
        engine.url.render_as_string(),
        config.blob_addr,
        "plaintext" if blob_credentials is None else "TLS",
    )
    if endpoint is not None:
        log.info("metadata service metrics at http://%s/metrics", endpoint.address)
    return RunningMetadataServer(
        started.server,
        port,
        engine,
        database,
        content,
        catalog,
        stopping,
        started.admission,
        metrics,
        metadata_metrics,
        endpoint,
    )


def _bootstrap_admin(catalog: MetadataCatalog, path: Path) -> None:
    """On the first start with authentication (no token exists), writes an admin token to ``path``."""
    secret = catalog.tokens.bootstrap_admin()
    if secret is not None:
        write_secret_file(path, secret)
        log.warning(
            "authentication is on and no token existed: wrote the first admin token to %s (mode 0600); "
            "create other tokens with `mreg token create` and keep this one safe",
            path.resolve(),
        )


def _janitor(
    catalog: MetadataCatalog, config: MetadataConfig, stopping: threading.Event, metrics: MetadataMetrics
) -> None:
    """Offers the periodic tasks to this replica until the server stops.

    Every replica runs this; the task leases (``catalog.tasks``) let one replica at a time
    run each task. Garbage collection runs once per GC interval across all replicas, first
    one interval after the first replica of the database started (the schedule is kept in
    the database, so restarts do not push it back). Expiry is cheap and each replica's
    pending TTL is its own (they may differ), so it is due whenever a replica's janitor
    wakes: never two at once, but never held back by another replica's schedule.
    """
    expiry_every = timedelta(0)
    gc_every = timedelta(seconds=config.gc_interval_seconds)
    gc_grace = timedelta(seconds=config.gc_grace_seconds)
    gc_scheduled = config.gc_interval_seconds <= 0
    while True:
        if not gc_scheduled:
            gc_scheduled = _schedule_first_gc(catalog, gc_every)
        if stopping.wait(config.janitor_interval_seconds):
            return
        _offer(catalog, "expire-pending", expiry_every, lambda: _expire_pending(catalog, metrics))
        if gc_scheduled and config.gc_interval_seconds > 0:
            _offer(catalog, "collect-garbage", gc_every, lambda: catalog.garbage.collect(gc_grace))


def _schedule_first_gc(catalog: MetadataCatalog, interval: timedelta) -> bool:
    """Schedules garbage collection one interval from now unless the database has a schedule; False if the
    database could not be reached (the janitor tries again when it next wakes)."""
    try:
        catalog.tasks.schedule("collect-garbage", utcnow() + interval)
    except Exception:  # the janitor must outlive a database hiccup at start
        log.exception("could not schedule garbage collection; retrying")
        return False
    return True


def _expire_pending(catalog: MetadataCatalog, metrics: MetadataMetrics) -> None:
    metrics.pending_expired.inc(catalog.versions.expire_pending())


def _offer(catalog: MetadataCatalog, name: str, interval: timedelta, task: Callable[[], object]) -> None:
    try:
        catalog.tasks.run_if_due(name, interval, task)
    except FailedPrecondition as e:
        # A sweep someone started by hand (CollectGarbage) holds the GC lease: it does the work.
        log.info("periodic task %s skipped: %s", name, e)
    except Exception:  # the janitor must outlive a database or blob service hiccup
        log.exception("periodic task %s failed; retrying in %s", name, interval)
