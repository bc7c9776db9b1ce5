"""The bounds on every string and number a blob request may carry, checked once at the edge.

The servicer's error-mapping decorator runs :func:`check_request` on each request (each
message of a Write stream) before the domain sees it. The check walks the protobuf
descriptor, so a field added to the proto later is bounded by the defaults below until it
gets a bound of its own. The bounds are documented in the proto comments.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from mreg.blob_service.errors import InvalidArgument
from mreg.server_runtime.edge import QUOTE_CHARS, clip_message, quote  # noqa: F401  (re-exported)

STRING_BOUNDS = {"hash": 64, "upload_id": 128}
DEFAULT_MAX_CHARS = 1024
# Sizes and offsets: never negative.
INT_BOUNDS = (0, (1 << 63) - 1)

# Digests per batch or lookup: the clients send at most 10 000, and the answer about that
# many stays far below a default client's 4 MiB receive limit.
MAX_ITEMS = 10_000

_TIMESTAMP = "google.protobuf.Timestamp"
# Timestamps Python's datetime can hold: years 1 to 9999.
_MIN_TIMESTAMP = -62135596800
_MAX_TIMESTAMP = 253402300799
_INT_TYPES = {3, 4, 5, 6, 7, 13, 15, 16, 17, 18}


def check_request(request: Message) -> None:
    """Checks every string and number of a request against its bound.

    Raises:
        InvalidArgument: naming the field (e.g. ``blob_digests[2].hash``) and the bound.
    """
    _check_message(request, "")


def _check_message(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():
        where = f"{prefix}{field.name}"
        values = list(value) if field.is_repeated else [value]
        if len(values) > MAX_ITEMS:
            raise InvalidArgument(
                f"{where} has {len(values)} items; the limit is {MAX_ITEMS}", metadata={"field": where}
            )
        for position, item in enumerate(values):
            _check_value(field, item, f"{where}[{position}]" if field.is_repeated else where)


def _check_value(field: Any, value: Any, where: str) -> None:
    if field.type == field.TYPE_STRING:
        limit = STRING_BOUNDS.get(field.name, DEFAULT_MAX_CHARS)
        if len(value) > limit:
            raise InvalidArgument(
                f"{where} is {len(value)} characters long; the limit is {limit} ({quote(value, 40)})",
                metadata={"field": where},
            )
        if "\0" in value:
            raise InvalidArgument(f"{where} contains a NUL character: {quote(value)}", metadata={"field": where})
    elif field.type in _INT_TYPES:
        low, high = INT_BOUNDS
        if not low <= value <= high:
            raise InvalidArgument(f"{where} is {value}; it must be between {low} and {high}", metadata={"field": where})
    elif field.type == field.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            if not _MIN_TIMESTAMP <= value.seconds <= _MAX_TIMESTAMP or not 0 <= value.nanos < 10**9:
                raise InvalidArgument(f"{where} is outside the years 1 to 9999", metadata={"field": where})
        else:
            _check_message(value, f"{where}.")
