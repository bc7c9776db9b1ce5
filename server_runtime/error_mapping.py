"""Domain errors to gRPC status, in one place for each service.

Each service keeps its own domain exceptions (its ``errors.py``), each naming the gRPC
status code it maps to in ``code``, its stable ``reason``, its ``metadata`` and the
``domain`` of its service; servicer methods are wrapped by :func:`abort_on_domain_error`,
so no layer below the servicer knows about gRPC and no method repeats an ``except``
block. Every error status carries a google.rpc.ErrorInfo (AIP-193) with the reason, so
clients in any language branch on it rather than on the message text; an error with
violations carries a google.rpc.PreconditionFailure too. :func:`status_proto` builds the
same status for a batch item's ``google.rpc.Status`` and :func:`rich_status` for the
aborts that happen outside a servicer method (stream admission, idle streams).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# Each ErrorInfo.metadata value is cut to this many characters, for the same reason.
MAX_METADATA_VALUE_CHARS = 512


def abort_on_domain_error(domain_error: type[Exception], check: Callable[[Any], Any]) -> Callable[[F], F]:
    """A decorator for servicer methods, unary or streaming.

    Args:
        domain_error: the service's base exception; each carries ``code``, a
            ``grpc.StatusCode`` name, ``reason``, ``metadata`` and ``domain``, and may
            carry ``violations``.
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


def status_proto(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[tuple[str, str, str]] = (),
    extra_details: Sequence[any_pb2.Any] = (),
) -> status_pb2.Status:
    """A google.rpc.Status carrying a PreconditionFailure if there are violations, ``extra_details``, and an ErrorInfo.

    ``violations`` are (type, subject, description) triples a client can act on.
    """
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=reason,
            domain=domain,
            metadata={key: str(value)[:MAX_METADATA_VALUE_CHARS] for key, value in (metadata or {}).items()},
        )
    )
    # The PreconditionFailure (if any) comes first, the ErrorInfo last: clients written before
    # the ErrorInfo existed read details[0].
    details: list[any_pb2.Any] = []
    # The detail travels in a trailer, which gRPC clients cap at 8 KiB by default: list the
    # first violations only (the message gives the total).
    shown = list(violations)[:MAX_VIOLATIONS]
    if shown:
        failure = any_pb2.Any()
        failure.Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(type=kind, subject=subject, description=text)
                    for kind, subject, text in shown
                ]
            )
        )
        details.append(failure)
    details.extend(extra_details)
    details.append(info)
    return status_pb2.Status(code=code.value[0], message=clip_message(message), details=details)


def domain_status(error: Exception) -> status_pb2.Status:
    """The google.rpc.Status a domain error maps to (for an abort, or for one item of a batch)."""
    return status_proto(
        grpc.StatusCode[getattr(error, "code", "UNKNOWN")],
        str(error),
        reason=str(getattr(error, "reason", "")),
        domain=str(getattr(error, "domain", "")),
        metadata=getattr(error, "metadata", None),
        violations=getattr(error, "violations", None) or (),
    )


def rich_status(status: status_pb2.Status) -> grpc.Status:
    """A google.rpc.Status as what ``context.abort_with_status`` sends (details in a trailer)."""
    return rpc_status.to_status(status)


def abort(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the RPC with the error's status, its ErrorInfo and, where it has violations, a PreconditionFailure."""
    context.abort_with_status(rich_status(domain_status(error)))
