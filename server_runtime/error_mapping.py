"""Domain errors to gRPC status, in one place for each service.

Each service keeps its own domain exceptions (its ``errors.py``), each naming the gRPC
status code it maps to in ``code``; servicer methods are wrapped by
:func:`abort_on_domain_error`, so no layer below the servicer knows about gRPC and no
method repeats an ``except`` block.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mreg.server_runtime.edge import clip_message

F = TypeVar("F", bound=Callable[..., Any])

# Structured violations listed in one error's google.rpc.PreconditionFailure: with the
# message, they stay well under the 8 KiB of trailers a default gRPC client accepts.
MAX_VIOLATIONS = 32


def abort_on_domain_error(domain_error: type[Exception], check: Callable[[Any], Any]) -> Callable[[F], F]:
    """A decorator for servicer methods, unary or streaming.

    Args:
        domain_error: the service's base exception; each carries ``code``, a
            ``grpc.StatusCode`` name, and may carry ``violations``.
        check: given the request (or a request iterator), returns what the method
            receives, raising a domain error for a request beyond the edge bounds.
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, check(request), context)
            except domain_error as e:
                abort(context, e)

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, check(request), context)
            except domain_error as e:
                abort(context, e)

        return streaming if inspect.isgeneratorfunction(method) else unary  # type: ignore[return-value]

    return decorate


def abort(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the RPC with the error's status, plus a google.rpc.PreconditionFailure where it has violations.

    ``violations`` are (type, subject, description) triples a client can act on.
    """
    code = grpc.StatusCode[getattr(error, "code", "UNKNOWN")]
    message = clip_message(str(error))
    # The detail travels in a trailer, which gRPC clients cap at 8 KiB by default: list the
    # first violations only (the message gives the total).
    violations: list[tuple[str, str, str]] = (getattr(error, "violations", None) or [])[:MAX_VIOLATIONS]
    if not violations:
        context.abort(code, message)
        return
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type=kind, subject=subject, description=text)
                for kind, subject, text in violations
            ]
        )
    )
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))
