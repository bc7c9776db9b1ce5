"""Opaque keyset page tokens: the last key of a page, bound to the listing it came from."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from metadata_service.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative (got {requested})")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(listing: str, key: Any) -> str:
    raw = json.dumps({"l": listing, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, listing: str) -> Any:
    """Returns the key a token carries; None for an empty token.

    Raises:
        InvalidArgument: the token is malformed or belongs to another listing.
    """
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if payload["l"] == listing:
            return payload["k"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        pass
    raise InvalidArgument("page_token is invalid: pass the next_page_token of the same listing unchanged")
