"""The bounds on every string and number a request may carry, checked once at the edge.

The servicer's error-mapping decorator runs :func:`check_request` on every request before
the domain sees it, so no value the database cannot store (NUL characters, integers past
the column types, NaN in JSON) and no value too large to answer about ever gets further.
The check is generic: it walks the request's protobuf descriptor, so a field added to the
proto later is bounded by the defaults below until it is given a bound of its own.

Besides the edge checks, this module holds the response budget: everything stored can be
read back by a default-configured gRPC client (4 MiB receive limit) in any language.

The bounds are documented in the proto comments; keep the two in step.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.server_runtime.edge import QUOTE_CHARS, clip_message, quote  # noqa: F401  (re-exported)

# Indexes (versions, links) are stored in 32-bit integer columns.
MAX_INDEX = (1 << 31) - 1
MAX_INT64 = (1 << 63) - 1
# Long enough for any retention policy someone means; short enough for datetime arithmetic.
MAX_GC_GRACE_SECONDS = 10 * 366 * 86400

MAX_DESCRIPTION_BYTES = 64 << 10
# Metadata documents: serialized size (as JSON and as a protobuf Struct) and nesting.
# Depth 20 keeps a stored document readable by any client: protobuf parsers refuse
# messages nested past 100 levels, and each document level costs three.
MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_DEPTH = 20

# Names: entity/project/name:selector, each part at most 128 characters.
MAX_REFERENCE_CHARS = 3 * 128 + 2 + 1 + 64
MAX_PAGE_TOKEN_CHARS = 2048
MAX_FILTER_CHARS = 4096
MAX_ORDER_BY_CHARS = 256
# Any string field not named below.
DEFAULT_MAX_CHARS = 1024

# Per field name, the most characters it may hold (UTF-8 bytes for descriptions and paths).
STRING_BOUNDS: dict[str, int] = {
    "artifact": MAX_REFERENCE_CHARS,
    "parent": MAX_REFERENCE_CHARS,
    "name": MAX_REFERENCE_CHARS,
    "reference": MAX_REFERENCE_CHARS,
    "target": MAX_REFERENCE_CHARS,
    "version": MAX_REFERENCE_CHARS,
    "versions": MAX_REFERENCE_CHARS,
    "registered_model": MAX_REFERENCE_CHARS,
    "collection": MAX_REFERENCE_CHARS,
    "run": MAX_REFERENCE_CHARS,
    "type": 64,
    "alias": 64,
    "aliases": 64,
    "tag": 128,
    "tags": 128,
    "add_tags": 128,
    "remove_tags": 128,
    "resource_prefix": 600,
    "request_id": 128,
    "uid": 64,
    "hash": 64,
    "page_token": MAX_PAGE_TOKEN_CHARS,
    "filter": MAX_FILTER_CHARS,
    "order_by": MAX_ORDER_BY_CHARS,
    "description": MAX_DESCRIPTION_BYTES,
    "path": 4096,
}
# Fields whose bound counts UTF-8 bytes rather than characters.
BYTE_BOUNDED = {"description", "path"}

# Per integer field name, the inclusive range allowed; other integers must not be negative.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "expected_index": (0, MAX_INDEX),
    "keep_last": (0, MAX_INDEX),
    "grace_period_seconds": (0, MAX_GC_GRACE_SECONDS),
}
DEFAULT_INT_BOUNDS = (0, MAX_INT64)
# The same for 32-bit fields (page_size): a message naming 2^63-1 as their bound would be wrong.
DEFAULT_INT32_BOUNDS = (0, (1 << 31) - 1)

# Per repeated field name, the most items it may hold; other repeated fields hold at most
# DEFAULT_MAX_ITEMS. The manifest's bound is generous: very many small files are normal.
REPEATED_BOUNDS: dict[str, int] = {
    "manifest": 1_000_000,
    "tags": 64,
    "add_tags": 64,
    "remove_tags": 64,
    "aliases": 64,
    "links": 64,
    "versions": 1000,
}
DEFAULT_MAX_ITEMS = 1000

_STRUCT = "google.protobuf.Struct"
_LIST_VALUE = "google.protobuf.ListValue"
_VALUE = "google.protobuf.Value"
_TIMESTAMP = "google.protobuf.Timestamp"
# Timestamps Python's datetime (and both databases) can hold: years 1 to 9999.
_MIN_TIMESTAMP = -62135596800
_MAX_TIMESTAMP = 253402300799


def check_text(value: str, where: str, limit: int, *, count_bytes: bool = False) -> None:
    """Raises InvalidArgument if ``value`` is longer than ``limit`` or holds a NUL character.

    PostgreSQL cannot store NUL in text or JSON, so it is refused on every database alike.
    """
    size = len(value.encode()) if count_bytes else len(value)
    if size > limit:
        unit = "bytes" if count_bytes else "characters"
        raise InvalidArgument(
            f"{where} is {size} {unit} long; the limit is {limit} ({quote(value, 40)})", metadata={"field": where}
        )
    if "\0" in value:
        raise InvalidArgument(
            f"{where} contains a NUL character, which the registry cannot store: {quote(value)}",
            metadata={"field": where},
        )


def check_int(value: int, where: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(f"{where} is {value}; it must be between {low} and {high}", metadata={"field": where})


def check_request(request: Message) -> None:
    """Checks every string and number of a request against its bound.

    Raises:
        InvalidArgument: naming the field (as a path, e.g. ``manifest[3].path``) and the bound.
    """
    _check_message(request, ())


# A field's path as parts, rendered only for an error message (requests may hold a
# million manifest entries, so nothing is formatted while all is well).
Path = tuple[str | int, ...]


def _render(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


_TEXT, _FLOAT, _INT, _DOCUMENT, _TIME, _MESSAGE, _OTHER = range(7)
# Per field descriptor: (kind, name, bound, counts bytes, item limit); computed once.
_PLANS: dict[Any, tuple[int, str, Any, bool, int]] = {}


def _plan(field: Any) -> tuple[int, str, Any, bool, int]:
    plan = _PLANS.get(field)
    if plan is None:
        name, kind = field.name, field.type
        items = REPEATED_BOUNDS.get(name, DEFAULT_MAX_ITEMS)
        if kind == field.TYPE_STRING:
            plan = (_TEXT, name, STRING_BOUNDS.get(name, DEFAULT_MAX_CHARS), name in BYTE_BOUNDED, items)
        elif kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            plan = (_FLOAT, name, None, False, items)
        elif kind in _INT_TYPES:
            default = DEFAULT_INT32_BOUNDS if kind in _INT32_TYPES else DEFAULT_INT_BOUNDS
            plan = (_INT, name, INT_BOUNDS.get(name, default), False, items)
        elif kind == field.TYPE_MESSAGE:
            message = field.message_type.full_name
            plan = ({_STRUCT: _DOCUMENT, _TIMESTAMP: _TIME}.get(message, _MESSAGE), name, None, False, items)
        else:
            plan = (_OTHER, name, None, False, items)
        _PLANS[field] = plan
    return plan


def _check_message(message: Message, path: Path) -> None:
    for field, value in message.ListFields():
        plan = _plan(field)
        if field.is_repeated:
            if len(value) > plan[4]:
                raise InvalidArgument(
                    f"{_render((*path, plan[1]))} has {len(value)} items; the limit is {plan[4]}",
                    metadata={"field": _render((*path, plan[1]))},
                )
            for position, item in enumerate(value):
                _check_value(plan, item, path, position)
        else:
            _check_value(plan, value, path, None)


def _check_value(plan: tuple[int, str, Any, bool, int], value: Any, path: Path, position: int | None) -> None:
    kind, name, bound, count_bytes, _ = plan
    if kind == _TEXT:
        if len(value) > bound or "\0" in value or (count_bytes and len(value.encode()) > bound):
            check_text(value, _render(_item(path, name, position)), bound, count_bytes=count_bytes)
    elif kind == _MESSAGE:
        _check_message(value, _item(path, name, position))
    elif kind == _INT:
        if not bound[0] <= value <= bound[1]:
            check_int(value, _render(_item(path, name, position)), bound)
    elif kind == _FLOAT:
        if not math.isfinite(value):
            raise InvalidArgument(
                f"{_render(_item(path, name, position))} is {value}; only finite numbers are accepted",
                metadata={"field": _render(_item(path, name, position))},
            )
    elif kind == _DOCUMENT:
        check_document(value, _render(_item(path, name, position)))
    elif kind == _TIME and not (_MIN_TIMESTAMP <= value.seconds <= _MAX_TIMESTAMP and 0 <= value.nanos < 10**9):
        raise InvalidArgument(
            f"{_render(_item(path, name, position))} is outside the years 1 to 9999",
            metadata={"field": _render(_item(path, name, position))},
        )


def _item(path: Path, name: str, position: int | None) -> Path:
    return (*path, name) if position is None else (*path, name, position)


def check_document(document: struct_pb2.Struct, where: str) -> None:
    """Checks a metadata document (a Struct): size, depth, finite numbers, no NUL."""
    size = document.ByteSize()
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{where} is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}",
            Reason.METADATA_INVALID,
            {"field": where},
        )
    _check_struct(document, where, 1)


def _check_struct(struct: struct_pb2.Struct, where: str, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidArgument(
            f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep", Reason.METADATA_INVALID, {"field": where}
        )
    for key, value in struct.fields.items():
        check_text(key, f"a key of {where}", DEFAULT_MAX_CHARS)
        _check_json_value(value, f"{where}.{key[:QUOTE_CHARS]}", depth)


def _check_json_value(value: struct_pb2.Value, where: str, depth: int) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(
                f"{where} is {value.number_value}; JSON holds only finite numbers",
                Reason.METADATA_INVALID,
                {"field": where},
            )
    elif kind == "string_value":
        check_text(value.string_value, where, MAX_METADATA_BYTES)
    elif kind == "struct_value":
        _check_struct(value.struct_value, where, depth + 1)
    elif kind == "list_value":
        if depth + 1 > MAX_METADATA_DEPTH:
            raise InvalidArgument(
                f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep",
                Reason.METADATA_INVALID,
                {"field": where},
            )
        for position, item in enumerate(value.list_value.values):
            _check_json_value(item, f"{where}[{position}]", depth + 1)


_INT_TYPES = {
    3,  # TYPE_INT64
    4,  # TYPE_UINT64
    5,  # TYPE_INT32
    6,  # TYPE_FIXED64
    7,  # TYPE_FIXED32
    13,  # TYPE_UINT32
    15,  # TYPE_SFIXED32
    16,  # TYPE_SFIXED64
    17,  # TYPE_SINT32
    18,  # TYPE_SINT64
}
_INT32_TYPES = {5, 15, 17}  # TYPE_INT32, TYPE_SFIXED32, TYPE_SINT32

# A list page stops before its response would pass this many bytes, well under the 4 MiB a
# default gRPC client accepts, and returns a next_page_token instead.
MAX_RESPONSE_BYTES = 3_500_000
