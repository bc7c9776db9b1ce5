"""Authentication at the edge of both services: the interceptor that admits each call.

A caller sends ``authorization: Bearer <secret>``. Each service turns the secret into a
:class:`Principal` (the metadata service from its token table, the blob service by
asking the metadata service) and checks the call against its own rule table before the
servicer runs. :class:`AuthInterceptor` does both for every RPC of the service's own
packages; health checking and reflection stay open, as load balancers and tools need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from mreg.server_runtime.error_mapping import rich_status, status_proto
from mreg.server_runtime.metrics import note_principal
from mreg.server_runtime.principals import CURRENT_PRINCIPAL, AuthError, Principal, bearer_secret

# The package prefix of the RPCs a service authorizes; anything else (health checking,
# reflection) is open.
PROTECTED_PREFIX = "/mreg."

Authenticate = Callable[[str | None], Principal]
# (method, request or None for a client stream, principal, request headers): raises AuthError.
Authorize = Callable[[str, Any, Principal, Mapping[str, str]], None]


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates and authorizes every call of the service's own RPCs before its servicer runs.

    The principal is available to the servicer through :func:`current_principal`.
    """

    def __init__(self, authenticate: Authenticate, authorize: Authorize, error_domain: str) -> None:
        self._authenticate = authenticate
        self._authorize = authorize
        self._domain = error_domain

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(PROTECTED_PREFIX):
            return handler
        return self._guarded(handler, method.rsplit("/", 1)[-1])

    def _admit(self, context: grpc.ServicerContext, method: str, request: Any) -> Principal:
        headers = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        try:
            principal = self._authenticate(bearer_secret(headers))
            note_principal(principal.name)  # so a refusal below is logged with who was refused
            self._authorize(method, request, principal, headers)
        except AuthError as e:
            context.abort_with_status(
                rich_status(
                    status_proto(
                        grpc.StatusCode[e.code], str(e), reason=e.reason, domain=self._domain, metadata=e.metadata
                    )
                )
            )
            raise AssertionError("unreachable") from e  # abort_with_status raises
        return principal

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler, admitting each call first; a client stream is authorized before its first message."""
        shape = (handler.request_streaming, handler.response_streaming)
        behavior, make = _SHAPES[shape](handler)

        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            return CURRENT_PRINCIPAL.set(self._admit(context, method, None if handler.request_streaming else request))

        if handler.response_streaming:

            def guarded_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token = admitted(request, context)
                try:
                    yield from behavior(request, context)
                finally:
                    CURRENT_PRINCIPAL.reset(token)

            return make(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            token = admitted(request, context)
            try:
                return behavior(request, context)
            finally:
                CURRENT_PRINCIPAL.reset(token)

        return make(
            guarded, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


# (request streaming, response streaming) -> the handler's behavior and the factory of a handler of that shape.
_SHAPES: dict[tuple[bool, bool], Callable[[grpc.RpcMethodHandler], tuple[Any, Any]]] = {
    (False, False): lambda h: (h.unary_unary, grpc.unary_unary_rpc_method_handler),
    (False, True): lambda h: (h.unary_stream, grpc.unary_stream_rpc_method_handler),
    (True, False): lambda h: (h.stream_unary, grpc.stream_unary_rpc_method_handler),
    (True, True): lambda h: (h.stream_stream, grpc.stream_stream_rpc_method_handler),
}
