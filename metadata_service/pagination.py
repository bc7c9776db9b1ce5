"""Opaque keyset page tokens: the last key of a page, bound to the listing it came from.

A token is base64url JSON ``{"l": <listing fingerprint>, "k": <key>}``. Clients must pass
tokens back unchanged, but nothing stops them from forging one, so decoding checks the
key's shape (its types and ranges) per listing before the key reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.limits import MAX_INDEX, MAX_INT64

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

KeyCheck = Callable[[Any], bool]


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {requested})", Reason.FIELD_INVALID, {"field": "page_size"}
        )
    return min(requested or default, maximum)


def _fingerprint(listing: str) -> str:
    # The listing names the parent, filter and ordering; a digest keeps tokens short
    # however long the filter is.
    return hashlib.sha256(listing.encode()).hexdigest()[:32]


def encode_token(listing: str, key: Any) -> str:
    raw = json.dumps({"l": _fingerprint(listing), "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, listing: str, valid: KeyCheck) -> Any:
    """Returns the key a token carries; None for an empty token.

    Raises:
        InvalidArgument: the token is malformed, belongs to another listing, or carries a
            key that listing never produces.
    """
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if isinstance(payload, dict) and payload.get("l") == _fingerprint(listing) and valid(payload.get("k")):
            return payload["k"]
    except (binascii.Error, ValueError, TypeError, RecursionError):
        pass
    raise InvalidArgument(
        "page_token is invalid: pass the next_page_token of the same listing unchanged", Reason.PAGE_TOKEN_INVALID
    )


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def index_key(value: Any) -> bool:
    """A version or link index."""
    return _is_int(value, 0, MAX_INDEX)


def sequence_key(value: Any) -> bool:
    """An event sequence."""
    return _is_int(value, 1, MAX_INT64)


def path_key(value: Any) -> bool:
    """A manifest path (at most 4096 UTF-8 bytes, no NUL)."""
    return isinstance(value, str) and 0 < len(value) <= 4096 and "\0" not in value


def name_key(value: Any) -> bool:
    """A collection name (the names' own grammar: at most 128 characters, no NUL)."""
    return isinstance(value, str) and 0 < len(value) <= 128 and "\0" not in value


def _time_text(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value, -MAX_INT64, MAX_INT64)


def version_key(order_field: str) -> KeyCheck:
    """A ListVersions key: ``[sort value, index]``, the sort value typed by the ordering."""
    sort_value: KeyCheck = {
        "index": index_key,
        "size_bytes": lambda v: _is_int(v, 0, MAX_INT64),
        "create_time": _time_text,
    }.get(order_field, lambda v: v is None or _number(v))

    def valid(value: Any) -> bool:
        return isinstance(value, list) and len(value) == 2 and sort_value(value[0]) and index_key(value[1])

    return valid
