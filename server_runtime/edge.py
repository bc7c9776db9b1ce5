"""What both services do at their edge before the domain sees a request.

Requests whose bytes do not parse (nested past protobuf's recursion limit, or holding a
string that is not UTF-8, which other languages' clients can send) would get INTERNAL
from gRPC itself, blaming the server. Servicers registered with
:func:`add_servicer_to_server` receive an :class:`Undecodable` instead and answer
INVALID_ARGUMENT. Error messages quote their input through :func:`quote` and are cut by
:func:`clip_message`, so no input can overflow a gRPC trailer.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import DecodeError

# Error messages quote at most this many characters of an input.
QUOTE_CHARS = 80
# A message that somehow grew longer is cut here (the gRPC trailer must stay small).
MAX_ERROR_MESSAGE_CHARS = 1000


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """The repr of at most ``limit`` characters of ``value``, noting how long it really was."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def clip_message(message: str) -> str:
    """Cuts an error message to a size that always fits a gRPC trailer."""
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 20] + "... (message cut)"


class Undecodable:
    """What a request deserializes to when its bytes are not a valid message."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def describe(self) -> str:
        return (
            "the request is not a valid protobuf message (nested more than 100 levels deep, or a string "
            f"that is not UTF-8): {str(self.error)[:QUOTE_CHARS]}"
        )


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as e:
            return Undecodable(e)

    return deserialize


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_servicer_to_server(servicer: Any, server: grpc.Server, pb_module: ModuleType, service_name: str) -> None:
    """Registers a servicer like the generated ``add_..._to_server``, with tolerant deserializers."""
    service = pb_module.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb_module, method.input_type.name)
        response_type = getattr(pb_module, method.output_type.name)
        make = _HANDLERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_type.FromString),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
