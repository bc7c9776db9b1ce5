"""RFC 8785 JSON Canonicalization Scheme (JCS): one byte string per JSON value, in any language.

Used for the manifest digest, which Go, Node or Java clients must be able to reproduce.
Python's ``json.dumps`` is not enough: it writes ``1e-07`` and ``1.0`` where ECMAScript
(and so every JCS implementation) writes ``1e-7`` and ``1``, and ``sort_keys`` orders keys
by code point where JCS orders them by UTF-16 code unit.

The rules (RFC 8785 section 3.2): no whitespace; object members sorted by the UTF-16 code
units of their names; strings as ECMAScript's ``JSON.stringify`` writes them (only ``"``,
``\\`` and the control characters below U+0020 escaped, as ``\\b \\t \\n \\f \\r`` or
``\\u00xx`` in lowercase hex; everything else literal); numbers are IEEE 754 doubles
written as ECMAScript's ``Number.prototype.toString`` writes them; UTF-8 output.
"""

from __future__ import annotations

import math
from json.encoder import encode_basestring
from typing import Any

# ECMAScript writes a number's shortest round-trip digits without an exponent while the
# decimal point lies within 21 digits of the first one, and down to 6 zeros after "0.".
_MAX_PLAIN_EXPONENT = 21
_MIN_PLAIN_EXPONENT = -6


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of a JSON value (dict, list, str, int, float, bool, None).

    Integers are numbers like any other, so beyond 2^53 they are rounded to the nearest
    double, as every JCS implementation does.

    Raises:
        ValueError: a NaN or infinite number, or a value JSON cannot hold.
    """
    return serialize(value).encode("utf-8")


def serialize(value: Any) -> str:
    """The RFC 8785 canonical form of a JSON value, as text (see canonicalize)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return format_number(float(value))
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("JSON object keys must be strings")
        members = sorted(value.items(), key=lambda item: item[0].encode("utf-16-be"))
        return "{" + ",".join(f"{serialize(k)}:{serialize(v)}" for k, v in members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(serialize(item) for item in value) + "]"
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def quote_string(value: str) -> str:
    """A string as JSON.stringify writes it, quotes included."""
    # json.dumps(ensure_ascii=False)'s encoder (in C) escapes exactly what JSON.stringify escapes, in the
    # same forms (\u00xx in lowercase hex for the other control characters); called directly, it
    # skips building an encoder per string.
    return str(encode_basestring(value))


def format_number(value: float) -> str:
    """A double as ECMAScript's Number.prototype.toString writes it (ECMA-262, Number::toString).

    Raises:
        ValueError: NaN or an infinity, which JSON cannot hold.
    """
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; JSON cannot hold it")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, which ECMAScript requires too.
    mantissa, _, exponent_text = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    digits = all_digits.lstrip("0")
    # n: the value is 0.<digits> x 10^n.
    n = len(whole) + (int(exponent_text) if exponent_text else 0) - (len(all_digits) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= _MAX_PLAIN_EXPONENT:
        return sign + digits + "0" * (n - k)
    if 0 < n <= _MAX_PLAIN_EXPONENT:
        return sign + digits[:n] + "." + digits[n:]
    if _MIN_PLAIN_EXPONENT < n <= 0:
        return sign + "0." + "0" * -n + digits
    exponent = n - 1
    exponent_sign = "+" if exponent >= 0 else "-"
    point = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{point}e{exponent_sign}{abs(exponent)}"
