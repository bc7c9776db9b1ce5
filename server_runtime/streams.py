"""Keeps streaming RPCs from starving unary ones on a sync gRPC server.

A sync gRPC server runs each RPC on a thread of its pool, and a streaming RPC keeps its
thread for as long as the stream is open: an idle Watch, a stalled upload, a slow
reader. With one pool of N threads for everything, N idle streams take the service
down, health checks included.

So a server gets ``unary_threads + max_streams`` threads, and ``StreamAdmission`` admits
at most ``max_streams`` streaming RPCs at a time; the next one is answered
RESOURCE_EXHAUSTED at once, with the setting to raise. Unary calls therefore always
find ``unary_threads`` threads no stream can take. ``IdleStreams`` ends client streams
that send nothing for too long, so stalled clients give their slot back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2
from grpc import _server  # internals: the only way to end a call from another thread with trailers

from mreg.server_runtime.error_mapping import rich_status, status_proto

log = logging.getLogger(__name__)

T = TypeVar("T")

# Unary calls that find every unary thread busy wait in a queue of this many per thread;
# beyond it gRPC answers RESOURCE_EXHAUSTED rather than letting the queue grow unbounded.
UNARY_QUEUE_PER_THREAD = 8
WARNING_INTERVAL_SECONDS = 10.0
# The ErrorInfo reasons of the refusals below; both services' ErrorReason enums declare them.
STREAM_LIMIT_REASON = "STREAM_LIMIT_REACHED"
STREAM_IDLE_REASON = "STREAM_IDLE"


def thread_pool(unary_threads: int, max_streams: int, name: str) -> tuple[futures.ThreadPoolExecutor, int]:
    """The thread pool for a server and its ``maximum_concurrent_rpcs``.

    Every admitted stream holds one thread; the rest serve unary calls (and refuse
    streams beyond the limit, which takes a moment).
    """
    pool = futures.ThreadPoolExecutor(max_workers=unary_threads + max_streams, thread_name_prefix=name)
    return pool, max_streams + unary_threads * UNARY_QUEUE_PER_THREAD


class StreamAdmission(grpc.ServerInterceptor):
    """Admits at most ``max_streams`` streaming RPCs at once; refuses more with RESOURCE_EXHAUSTED.

    Every streaming method of the server counts, including health Watch and reflection.
    The slot is taken on the thread that runs the RPC and given back when the handler
    returns, so the count is exactly the threads that streams hold.
    """

    def __init__(self, max_streams: int, setting: str, error_domain: str) -> None:
        """``error_domain`` is the service's ErrorInfo domain, e.g. "blob.mreg.dev"."""
        if max_streams < 1:
            raise ValueError(f"the stream limit must be at least 1 (got {max_streams})")
        self.max_streams = max_streams
        self._setting = setting
        self._domain = error_domain
        self._active = 0
        self._lock = threading.Lock()
        self._last_warning = -WARNING_INTERVAL_SECONDS

    @property
    def active(self) -> int:
        """Streams being served right now."""
        return self._active

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        return self._admitting(handler, handler_call_details.method)

    def _admit(self, context: grpc.ServicerContext, method: str) -> None:
        with self._lock:
            admitted = self._active < self.max_streams
            if admitted:
                self._active += 1
        if not admitted:
            now = time.monotonic()
            if now - self._last_warning >= WARNING_INTERVAL_SECONDS:  # a flood of refusals logs one line
                self._last_warning = now
                log.warning("refused %s: %d streams are open, the limit (%s)", method, self.max_streams, self._setting)
            context.abort_with_status(self._refusal(method))

    def _refusal(self, method: str) -> grpc.Status:
        """RESOURCE_EXHAUSTED with RetryInfo, which tells clients this refusal (unlike a full disk) is worth
        retrying, and ErrorInfo, whose reason they can branch on."""
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
        return rich_status(
            status_proto(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is serving its limit of {self.max_streams} concurrent streams, so {method} "
                f"was refused: retry with backoff, close idle streams, or raise the limit ({self._setting})",
                reason=STREAM_LIMIT_REASON,
                domain=self._domain,
                metadata={"max_streams": str(self.max_streams), "setting": self._setting},
                extra_details=[retry],
            )
        )

    def _release(self) -> None:
        with self._lock:
            self._active -= 1

    def _admitting(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        options: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._admit(context, method)
                try:
                    yield from behavior(request, context)
                finally:
                    self._release()

            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(stream, **options)
            return grpc.unary_stream_rpc_method_handler(stream, **options)

        unary_behavior = handler.stream_unary

        def unary(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            self._admit(context, method)
            try:
                return unary_behavior(request_iterator, context)
            finally:
                self._release()

        return grpc.stream_unary_rpc_method_handler(unary, **options)


@dataclass(slots=True, eq=False)
class _Watched:
    context: grpc.ServicerContext
    details: str
    # A stalled reader: the server's data is stuck behind flow control, and so would a status be.
    reading: bool = False
    waiting_since: float | None = None
    expired: bool = False


class IdleStreams:
    """Ends streams whose client leaves the server waiting too long: one that sends nothing
    (a stalled upload), or one that takes nothing (a reader that stopped reading, whose
    thread would otherwise block on flow control forever).

    Only time spent waiting for the client counts, not time the server spends on a
    message. An expired stream is cancelled with ``code`` and a message naming the
    setting and what to do; on the server a request iterator simply ends, so the handler
    finishes normally (an upload keeps the bytes it received and can be resumed).
    """

    def __init__(self, timeout_seconds: float, code: grpc.StatusCode, setting: str, error_domain: str) -> None:
        """``error_domain`` is the service's ErrorInfo domain; the reason is STREAM_IDLE."""
        self.timeout = timeout_seconds
        self._code = code
        self._setting = setting
        self._domain = error_domain
        self._watched: set[_Watched] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def watch(self, requests: Iterator[T], context: grpc.ServicerContext, advice: str) -> Iterator[T]:
        """Yields ``requests``, ending the stream if the client sends nothing for ``timeout`` seconds."""
        if self.timeout <= 0:
            yield from requests
            return
        entry = self._register(context, f"the client sent nothing for {self.timeout:g} s ({self._setting}); {advice}")
        try:
            while True:
                entry.waiting_since = time.monotonic()
                try:
                    message = next(requests)
                except StopIteration:
                    return
                except grpc.RpcError:
                    if entry.expired:
                        return  # the watchdog ended the call; its status is on the way to the client
                    raise
                finally:
                    entry.waiting_since = None
                yield message
        finally:
            self._unregister(entry)

    def watch_responses(self, responses: Iterable[T], context: grpc.ServicerContext, advice: str) -> Iterator[T]:
        """Yields ``responses``, ending the stream if the client takes none for ``timeout`` seconds.

        gRPC asks for the next response only once the previous one is sent, and a send
        waits while the client's flow-control window is full: the time a ``yield`` takes
        is the time the client leaves the server waiting.
        """
        if self.timeout <= 0:
            yield from responses
            return
        entry = self._register(
            context, f"the client took no data for {self.timeout:g} s ({self._setting}); {advice}", reading=True
        )
        try:
            for response in responses:
                entry.waiting_since = time.monotonic()
                yield response
                entry.waiting_since = None
        finally:
            self._unregister(entry)

    def _register(self, context: grpc.ServicerContext, details: str, reading: bool = False) -> _Watched:
        entry = _Watched(context, details, reading)
        with self._lock:
            self._watched.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="idle-streams", daemon=True)
                self._thread.start()
        return entry

    def _unregister(self, entry: _Watched) -> None:
        with self._lock:
            self._watched.discard(entry)

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        period = min(1.0, self.timeout / 4)
        while not self._stopping.wait(period):
            now = time.monotonic()
            with self._lock:
                expired = [
                    w
                    for w in self._watched
                    if not w.expired and w.waiting_since is not None and now - w.waiting_since > self.timeout
                ]
                for w in expired:
                    w.expired = True
            for w in expired:
                status = rich_status(
                    status_proto(
                        self._code,
                        w.details,
                        reason=STREAM_IDLE_REASON,
                        domain=self._domain,
                        metadata={"timeout_seconds": f"{self.timeout:g}", "setting": self._setting},
                    )
                )
                if w.reading:
                    # Trailers queue behind the data the client does not take: only a cancel
                    # (code and message, without details) reaches it.
                    _cancel(w.context, status)
                else:
                    _end_with_status(w.context, status)


def _end_with_status(context: grpc.ServicerContext, status: grpc.Status) -> None:
    """Ends a call from outside its handler's thread, with a status the client can act on.

    The public ``cancel()`` always says CANCELLED, which would mislead, and no public API
    ends a call from another thread with trailing metadata (where the ErrorInfo travels).
    So this sends the status as gRPC's own abort does, then marks the call cancelled so
    the handler, which finishes normally, sends nothing more (its request iterator
    raises). If gRPC's internals differ, it falls back to :func:`_cancel`.
    """
    state = getattr(context, "_state", None)
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        with state.condition:  # type: ignore[union-attr]
            if state.client is _server._CANCELLED or state.statused:  # type: ignore[union-attr]
                return
            state.code = status.code  # type: ignore[union-attr]
            state.details = status.details.encode()  # type: ignore[union-attr]
            state.trailing_metadata = status.trailing_metadata  # type: ignore[union-attr]
            _server._abort(state, call, status.code.value[0], state.details)  # type: ignore[union-attr]
            state.client = _server._CANCELLED  # type: ignore[union-attr]
            state.condition.notify_all()  # type: ignore[union-attr]
        return
    except (AttributeError, TypeError):
        _cancel(context, status)


def _cancel(context: grpc.ServicerContext, status: grpc.Status) -> None:
    """Cancels the core call with the status's code and message (not its details), else ``cancel()``."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(status.code.value[0], status.details)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        context.cancel()
