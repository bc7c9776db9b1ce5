"""The name grammar of the metadata service, checked on the client before any work starts.

A push hashes and uploads before it commits; a run name, alias or link target the server
would refuse must be refused first, so a typo costs nothing and leaves nothing behind.
These rules mirror metadata_service/references.py (the client does not import the
service); tests/test_client_hardening.py checks that both accept exactly the same text.
The server stays the authority: passing here only means the request is worth sending.
"""

from __future__ import annotations

import re

from mreg.client.errors import MregError

NAME_MAX = 128
ALIAS_MAX = 64
LATEST = "latest"

_NAME = re.compile(r"[A-Za-z0-9 ._-]{1,128}")
_ALIAS = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TYPE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LABELS = ("entity", "project", "name")


def _invalid(message: str) -> MregError:
    return MregError("INVALID_ARGUMENT", message)


def check_name(value: str, what: str = "name") -> str:
    if not _NAME.fullmatch(value) or value != value.strip(" ") or not value.strip("."):
        raise _invalid(
            f"{what} {value[:200]!r} is invalid: use 1-{NAME_MAX} letters, digits, spaces, '.', '_' or '-', "
            "with no leading or trailing space and not only dots"
        )
    return value


def check_alias(value: str) -> str:
    """Checks an alias a user may set ('latest' and 'vN' are the registry's own)."""
    if not _ALIAS.fullmatch(value):
        raise _invalid(f"alias {value[:200]!r} is invalid: use 1-{ALIAS_MAX} letters, digits, '.', '_' or '-'")
    if value == LATEST or re.fullmatch(r"v[0-9]+", value):
        raise _invalid(f"alias {value!r} is reserved: the registry maintains 'latest' and 'vN' itself")
    return value


def check_type(value: str) -> str:
    if not _TYPE.fullmatch(value):
        raise _invalid(
            f"type {value[:200]!r} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-' "
            "(e.g. 'model' or 'dataset')"
        )
    return value


def check_collection(text: str, entity: str | None = None, project: str | None = None, what: str = "name") -> str:
    """Checks ``[[entity/]project/]name`` (no ':selector'); returns the full name.

    ``entity`` and ``project`` are the defaults the server will apply (the mreg-entity
    and mreg-project headers).

    Raises:
        MregError: INVALID_ARGUMENT, saying what is wrong.
    """
    if ":" in text:
        raise _invalid(f"{what} {text[:200]!r} must not carry a ':selector' here")
    if not text:
        raise _invalid(f"{what} is empty")
    given = text.split("/")
    if len(given) > len(_LABELS):
        raise _invalid(
            f"{what} {text[:200]!r} has {len(given)} '/'-separated parts; at most {len(_LABELS)} are allowed "
            f"({'/'.join(_LABELS)})"
        )
    missing = len(_LABELS) - len(given)
    filled: list[str] = []
    for label, default in zip(_LABELS[:missing], (entity, project), strict=False):
        if not default:
            raise _invalid(
                f"{what} {text[:200]!r} names no {label} and no default {label} is set "
                f"(set MREG_{label.upper()} or write {'/'.join(_LABELS)})"
            )
        filled.append(default)
    parts = filled + given
    for label, part in zip(_LABELS, parts, strict=True):
        check_name(part, f"{label} of {what} {text[:200]!r}:")
    return "/".join(parts)
