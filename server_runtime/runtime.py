"""Starting, running and stopping a service process, the same way for both services.

:func:`start_server` builds a gRPC server whose streams cannot starve unary calls
(``server_runtime.streams``), adds the service's servicers with health checking and
reflection, binds (with TLS when given credentials) and starts it. :func:`run_main` is a
service's ``python -m`` entry point: flags, logging, start, then a graceful stop on SIGTERM
or SIGINT; a transport setting the service refuses (``server_runtime.transport``) ends it
with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc

from mreg.server_runtime import streams
from mreg.server_runtime.introspection import add_health_and_reflection
from mreg.server_runtime.metrics import RPC_LOGGER, check_metrics_address
from mreg.server_runtime.transport import StartupError, TransportConfigError, check_listen_address

# Seconds in-flight calls get to finish once a stop signal arrives.
STOP_GRACE_SECONDS = 5
# Clients ping a silent connection to tell a hung replica from a busy one (client.channels.keepalive_options,
# at most once a second); gRPC's default answers pings more frequent than every 5 minutes with GOAWAY.
MIN_PING_INTERVAL_MS = 500


def connection_options(max_connection_age_seconds: float) -> list[tuple[str, Any]]:
    """Accepts the clients' keepalive pings; closes connections gracefully (GOAWAY; calls in flight finish)
    after ``max_connection_age_seconds`` (0: never), so clients of a DNS name resolve it again and reach
    replicas added since (a Kubernetes headless Service scaling out). gRPC adds +/-10% jitter to the age, so
    a fleet's connections do not all move at once."""
    options: list[tuple[str, Any]] = [
        # gRPC sets SO_REUSEPORT by default: a second service started on a port in use would share it, and the
        # kernel split connections between two services (on different stores). Without it, the bind fails.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ]
    if max_connection_age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age_seconds * 1000)))
    return options


@dataclass(frozen=True)
class StartedServer:
    server: grpc.Server
    port: int
    admission: streams.StreamAdmission


def check_addresses(
    listen: str, metrics_listen: str, *, authenticated: bool, insecure: bool, tls: bool, insecure_flag: str
) -> None:
    """The loopback rule for a service's gRPC address and, if it serves one, its metrics address.

    Raises:
        TransportConfigError: an address the rule refuses (see ``transport.check_listen_address``).
    """
    check_listen_address(listen, authenticated=authenticated, insecure=insecure, tls=tls, insecure_flag=insecure_flag)
    if metrics_listen:
        check_metrics_address(metrics_listen, insecure=insecure, insecure_flag=insecure_flag)


def start_server(
    *,
    listen: str,
    workers: int,
    max_streams: int,
    max_streams_setting: str,
    thread_name: str,
    options: Sequence[tuple[str, Any]],
    add_servicers: Callable[[grpc.Server], None],
    service_name: str,
    error_domain: str,
    more_service_names: Sequence[str] = (),
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    observer: grpc.ServerInterceptor | None = None,
    max_connection_age_seconds: float = 0,
) -> StartedServer:
    """Builds, binds and starts a server; returns once it listens.

    Streams hold a thread each while open, so they get ``max_streams`` threads of their
    own and ``workers`` threads stay for unary calls and health checks.

    Args:
        max_streams_setting: how to raise the stream limit, named in the refusal.
        add_servicers: registers the service's servicers on the server.
        service_name: the full name health checking reports SERVING.
        error_domain: the ErrorInfo domain of the refusals of streams beyond the limit.
        more_service_names: other services the servicers serve, for health and reflection.
        interceptors: run before stream admission, e.g. authentication (so a refused
            caller never holds a stream slot).
        credentials: TLS server credentials (``transport.server_credentials``); None serves plaintext.
        observer: runs outside every other interceptor (``metrics.RpcObserver``), so it sees every call,
            refused ones included.
        max_connection_age_seconds: see ``connection_options``.

    Raises:
        StartupError: ``listen`` cannot be bound.
    """
    pool, max_rpcs = streams.thread_pool(workers, max_streams, thread_name)
    admission = streams.StreamAdmission(max_streams, max_streams_setting, error_domain)
    server = grpc.server(
        pool,
        interceptors=[*([observer] if observer is not None else []), *interceptors, admission],
        options=[*connection_options(max_connection_age_seconds), *options],
        maximum_concurrent_rpcs=max_rpcs,
    )
    add_servicers(server)
    add_health_and_reflection(server, service_name, *more_service_names)
    try:
        port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    except RuntimeError:  # gRPC's "Failed to bind", which says no more
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {listen}: the address is in use, or not one of this machine's")
    server.start()
    return StartedServer(server, port, admission)


def wait_for_stop_signal() -> None:
    """Blocks until the process receives SIGTERM or SIGINT."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()


class Running(Protocol):
    @property
    def address(self) -> str: ...

    def stop(self, grace: float | None = None) -> None: ...


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the record's structured ``rpc`` fields
    (``metrics.RpcObserver``) or else its message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "rpc", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging() -> None:
    """Text lines on stderr for every logger, except JSON lines for failed RPCs (``mreg.rpc``), which
    log collectors parse; safe to call more than once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rpc_log = logging.getLogger(RPC_LOGGER)
    if not any(isinstance(h.formatter, JsonFormatter) for h in rpc_log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        rpc_log.addHandler(handler)
    rpc_log.propagate = False  # once, as JSON, not again as text through the root logger


def run_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    start: Callable[[argparse.Namespace], Running],
    what: str,
) -> None:
    """Parses flags, starts the service, prints where it listens, and stops it gracefully on a signal."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        running = start(args)
    except TransportConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StartupError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    # The host as --listen gave it ([::1], 0.0.0.0, a name), with the port bound (--listen HOST:0 picks one).
    host = str(getattr(args, "listen", running.address)).rsplit(":", 1)[0]
    print(f"{what} listening on {host}:{running.address.rsplit(':', 1)[1]}", flush=True)
    wait_for_stop_signal()
    running.stop(grace=STOP_GRACE_SECONDS)
