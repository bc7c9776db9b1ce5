"""What operators see of a running service: Prometheus metrics of its RPCs, and a JSON log line per failed RPC.

Each service owns a :class:`ServiceMetrics`, whose ``CollectorRegistry`` is its own (never the
process-wide default), so two services in one process (``mreg serve``, the tests) keep their
series apart. :class:`RpcObserver` is the server interceptor that times every call (a streaming
call from its start to its last message), counts it by status code, tracks open streams, and
writes one line on the ``mreg.rpc`` logger for each call that fails; :func:`serve_metrics`
exposes a registry over HTTP at ``--metrics-listen``, under the loopback rule of
``server_runtime.transport``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from mreg.server_runtime.transport import StartupError, TransportConfigError, check_port, is_loopback, listen_host

RPC_LOGGER = "mreg.rpc"
rpc_log = logging.getLogger(RPC_LOGGER)

# Unary calls take milliseconds; streams (Watch, large Reads and Writes) minutes.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Codes the server answers because the caller got something wrong; the others are the service's own trouble.
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class CallNote:
    """What the edge learns about a call while it runs, for the call's log line: who made it."""

    __slots__ = ("principal",)

    def __init__(self) -> None:
        self.principal = ""


# Set by RpcObserver around a call when authentication is on; AuthInterceptor, which runs inside it,
# writes the principal's name here (its own CURRENT_PRINCIPAL is reset before the observer logs).
CURRENT_CALL: ContextVar[CallNote | None] = ContextVar("mreg_current_call", default=None)


def note_principal(name: str) -> None:
    """Records the authenticated caller of the current call, if anything observes it."""
    note = CURRENT_CALL.get()
    if note is not None:
        note.principal = name


class ServiceMetrics:
    """One service's metrics, in a registry of its own.

    Args:
        server: which service this is ("metadata" or "blob"), the ``server`` label of every RPC
            series, so the two services' series stay apart where one endpoint shows both.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("server", "service", "method")
        self.rpc_duration = Histogram(
            "mreg_rpc_duration_seconds",
            "Time from an RPC's start to its status (a stream's whole life), by status code.",
            [*labels, "code"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.rpcs = Counter(
            "mreg_rpc_handled", "RPCs completed, by status code.", [*labels, "code"], registry=self.registry
        )
        self.open_streams = Gauge("mreg_rpc_open_streams", "Streaming RPCs open now.", labels, registry=self.registry)
        self.received_bytes = Counter(
            "mreg_rpc_received_message_bytes",
            "Bytes of the request messages RPCs received, serialized (before gRPC's framing), by method.",
            labels,
            registry=self.registry,
        )
        self.sent_bytes = Counter(
            "mreg_rpc_sent_message_bytes",
            "Bytes of the response messages RPCs sent, serialized (before gRPC's framing), by method.",
            labels,
            registry=self.registry,
        )

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter of this service's registry (``name`` without ``_total``; Prometheus adds it)."""
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def add_collector(self, collector: Collector) -> None:
        """Adds a collector whose values are read at scrape time (e.g. a connection pool's)."""
        self.registry.register(collector)


class _MethodSeries:
    """The label children of one method, looked up once: per call only the code's children are found."""

    __slots__ = ("by_code", "method", "metrics", "open_streams", "received", "sent", "service")

    def __init__(self, metrics: ServiceMetrics, full_method: str, *, streaming: bool) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.metrics = metrics
        self.service = service
        self.method = method
        # Only streaming methods get the gauge: a unary method's would always show 0 open streams.
        self.open_streams = metrics.open_streams.labels(metrics.server, service, method) if streaming else None
        self.received = metrics.received_bytes.labels(metrics.server, service, method)
        self.sent = metrics.sent_bytes.labels(metrics.server, service, method)
        self.by_code: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def stream_opened(self) -> None:
        if self.open_streams is not None:
            self.open_streams.inc()

    def stream_closed(self) -> None:
        if self.open_streams is not None:
            self.open_streams.dec()

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        children = self.by_code.get(code)
        if children is None:
            m, name = self.metrics, code.name
            children = self.by_code[code] = (
                m.rpc_duration.labels(m.server, self.service, self.method, name),
                m.rpcs.labels(m.server, self.service, self.method, name),
            )
        children[0].observe(seconds)
        children[1].inc()


class RpcObserver(grpc.ServerInterceptor):
    """Times and counts every call of the server and logs each failed one; runs outside every other interceptor,
    so refusals by authentication and stream admission count too.

    Args:
        track_principal: authentication is on: log the caller's name with a failure.
    """

    def __init__(self, metrics: ServiceMetrics, *, track_principal: bool = False) -> None:
        self._metrics = metrics
        self._track_principal = track_principal
        self._series: dict[str, _MethodSeries] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method
        series = self._series.get(full_method)
        if series is None:
            # Only methods the server has get series: an unknown name (handler None) adds none.
            streaming = handler.request_streaming or handler.response_streaming
            series = self._series.setdefault(
                full_method, _MethodSeries(self._metrics, full_method, streaming=streaming)
            )
        if handler.response_streaming:
            return self._observe_response_stream(handler, series)
        return self._observe_unary_response(handler, series)

    # Neither wrapper keeps the exception in a local beyond its ``except`` block: the traceback would hold the
    # frame, and with it the wrapped stream, past the call's end (until the garbage collector found the cycle).

    def _observe_unary_response(self, handler: grpc.RpcMethodHandler, series: _MethodSeries) -> grpc.RpcMethodHandler:
        streaming = handler.request_streaming
        behavior = handler.stream_unary if streaming else handler.unary_unary
        track_principal = self._track_principal

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            note = CallNote() if track_principal else None
            token = CURRENT_CALL.set(note) if note is not None else None
            series.stream_opened()
            try:
                response = behavior(request, context)
            except BaseException as e:
                _end(series, context, started, e, note, token, stream=False)
                raise
            _end(series, context, started, None, note, token, stream=False)
            return response

        make = grpc.stream_unary_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        return make(observed, **_counting_bytes(handler, series))

    def _observe_response_stream(self, handler: grpc.RpcMethodHandler, series: _MethodSeries) -> grpc.RpcMethodHandler:
        streaming = handler.request_streaming
        behavior = handler.stream_stream if streaming else handler.unary_stream
        track_principal = self._track_principal

        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            note = CallNote() if track_principal else None
            series.stream_opened()
            responses = iter(behavior(request, context))
            try:
                while True:
                    # The note is set around each step: between steps gRPC's thread is not this call's.
                    token = CURRENT_CALL.set(note) if note is not None else None
                    try:
                        response = next(responses)
                    except StopIteration:
                        break
                    finally:
                        if token is not None:
                            CURRENT_CALL.reset(token)
                    yield response
            except BaseException as e:
                # Closing the wrapped stream now runs its own clean-up (a stream slot given back) before the
                # call counts as ended, as ``yield from`` would.
                close = getattr(responses, "close", None)
                try:
                    if close is not None:
                        close()
                finally:
                    _end(series, context, started, e, note, None, stream=True)
                raise
            _end(series, context, started, None, note, None, stream=True)

        make = grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_stream_rpc_method_handler
        return make(observed, **_counting_bytes(handler, series))


def _counting_bytes(handler: grpc.RpcMethodHandler, series: _MethodSeries) -> dict[str, Any]:
    """The handler's (de)serializers, counting the bytes of every message where they are bytes anyway: the
    size costs nothing there, where measuring the messages would serialize them a second time."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    received, sent = series.received, series.sent

    def counted_request(data: bytes) -> Any:
        received.inc(len(data))
        return deserialize(data) if deserialize is not None else data

    def counted_response(message: Any) -> bytes:
        data = serialize(message) if serialize is not None else message
        sent.inc(len(data))
        return data

    return {"request_deserializer": counted_request, "response_serializer": counted_response}


def _end(
    series: _MethodSeries,
    context: grpc.ServicerContext,
    started: float,
    error: BaseException | None,
    note: CallNote | None,
    token: Token[CallNote | None] | None,
    *,
    stream: bool,
) -> None:
    if token is not None:
        CURRENT_CALL.reset(token)
    series.stream_closed()  # nothing for a unary method, which has no open-streams gauge
    _finish(series, context, started, error, note, stream)


def _finish(
    series: _MethodSeries,
    context: grpc.ServicerContext,
    started: float,
    error: BaseException | None,
    note: CallNote | None,
    stream: bool,
) -> None:
    """Records the call's duration and code; logs it if it failed.

    ``stream``: a response stream, which may end without an error when its caller left (only then is
    ``is_active``, which takes a lock, asked about a call that succeeded).
    """
    seconds = time.perf_counter() - started
    code = context.code()
    client_left = False
    if code is None:  # the handler neither aborted nor set a code
        if error is None and not stream:
            code = grpc.StatusCode.OK
        elif isinstance(error, GeneratorExit) or not context.is_active():
            # gRPC stopped asking for responses, or a stream's handler saw its caller leave and returned
            # (Watch): the caller cancelled or its deadline passed.
            code, client_left = grpc.StatusCode.CANCELLED, True
        elif error is None:
            code = grpc.StatusCode.OK
        else:
            code = grpc.StatusCode.UNKNOWN  # an exception gRPC answers as "Exception calling application"
    series.finished(code, seconds)
    if code is grpc.StatusCode.OK or client_left:
        return  # a caller that hangs up (the usual end of a Watch) is no failure of the service
    _log_failure(series, context, code, seconds, error, note)


def _log_failure(
    series: _MethodSeries,
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    seconds: float,
    error: BaseException | None,
    note: CallNote | None,
) -> None:
    details = context.details()
    if details:
        message = details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details)
    elif error is not None and context.code() is None:
        message = f"Exception calling application: {error}"  # what gRPC tells the caller
    else:
        message = ""
    fields: dict[str, Any] = {
        "service": series.service,
        "method": series.method,
        "code": code.name,
        "reason": _reason(context.trailing_metadata()),
        "message": message,
        "duration_ms": round(seconds * 1000, 3),
        "peer": context.peer(),
    }
    if note is not None:
        fields["principal"] = note.principal or None  # None: refused before it was identified
    level = logging.INFO if code in _CALLER_CODES else logging.WARNING
    rpc_log.log(level, "%s/%s failed: %s %s", series.service, series.method, code.name, message, extra={"rpc": fields})


def _reason(trailing_metadata: Any) -> str:
    """The ErrorInfo reason in a status's details (the trailer ``abort_with_status`` sends), or ""."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer must not break the call's end
            return ""
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason
    return ""


class MetricsEndpoint:
    """The HTTP server exposing a registry at ``/metrics`` (any path answers the same)."""

    def __init__(self, httpd: WSGIServer, host: str) -> None:
        self._httpd = httpd
        self.port: int = httpd.server_port
        self.host = host

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def check_metrics_address(listen: str, *, insecure: bool, insecure_flag: str = "--insecure") -> None:
    """The loopback rule for the metrics endpoint, which never authenticates its callers.

    On loopback it serves; elsewhere only with ``insecure`` (the operator accepts unauthenticated
    callers), with a warning.

    Raises:
        TransportConfigError: a non-loopback address without ``insecure``, or no port.
    """
    if listen.startswith(("unix:", "unix-abstract:")) or (not listen.rpartition(":")[0] and not listen.startswith(":")):
        raise TransportConfigError(f"--metrics-listen {listen}: give HOST:PORT, e.g. 127.0.0.1:9464")
    check_port(listen, "--metrics-listen", "127.0.0.1:9464")
    if is_loopback(listen):
        return
    if not insecure:
        raise TransportConfigError(
            f"refusing to serve metrics on {listen}, which is not a loopback address: the metrics endpoint does "
            f"not authenticate its callers. Listen on 127.0.0.1, or pass {insecure_flag} to serve it anyway"
        )
    logging.getLogger(__name__).warning(
        "serving metrics on %s with --insecure: anyone who can reach it reads the service's RPC rates and errors "
        "(plain HTTP, no authentication)",
        listen,
    )


def serve_metrics(listen: str, registry: Collector) -> MetricsEndpoint:
    """Serves ``registry`` over HTTP at ``listen`` (HOST:PORT; port 0 picks a free one) on a daemon thread,
    with the process's own series (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, open file
    descriptors; Linux only) and the Python runtime's (garbage collections), once per endpoint: they describe
    the process, which may run more than one service (``mreg serve``).

    Call :func:`check_metrics_address` first.

    Raises:
        StartupError: ``listen`` cannot be bound.
    """
    from prometheus_client import start_http_server

    host = listen_host(listen) or "0.0.0.0"
    port = int(listen.rpartition(":")[2])
    try:
        httpd, _thread = start_http_server(port, host, MergedRegistries(registry, _process_registry()))
    except OSError as e:
        raise StartupError(f"cannot serve metrics on {listen}: {e.strerror or e}") from e
    return MetricsEndpoint(httpd, host)


def _process_registry() -> CollectorRegistry:
    """The series of this process and its Python runtime, in a registry of their own."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MergedRegistries(Collector):
    """Several registries as one, for one endpoint showing several services (``mreg serve``).

    Families of the same name are merged; their samples differ in the ``server`` label.
    """

    def __init__(self, *registries: Collector) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Any]:
        merged: dict[str, Any] = {}
        for registry in self._registries:
            for family in registry.collect():
                existing = merged.get(family.name)
                if existing is None:
                    merged[family.name] = family
                else:
                    existing.samples.extend(family.samples)
        yield from merged.values()
