"""The reference grammar ``[[entity/]project/]name[:selector]`` and the name rules.

Parsing is strict and total: any string either parses or raises InvalidArgument with a
message saying what is wrong and where, so malformed input never reaches the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mreg.metadata_service.errors import InvalidArgument, NotFound, Reason
from mreg.metadata_service.limits import quote

NAME_MAX = 128
ALIAS_MAX = 64
LATEST = "latest"

_NAME = re.compile(r"[A-Za-z0-9 ._-]{1,128}")
_ALIAS = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INDEX = re.compile(r"v(0|[1-9][0-9]{0,17})")
_TYPE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Defaults:
    """The caller's default entity and project, used where a reference omits them."""

    entity: str | None = None
    project: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectName:
    entity: str
    project: str

    def __str__(self) -> str:
        return f"{self.entity}/{self.project}"


@dataclass(frozen=True, slots=True)
class CollectionName:
    """The full name of an artifact or registered model."""

    entity: str
    project: str
    name: str

    @property
    def project_name(self) -> ProjectName:
        return ProjectName(self.entity, self.project)

    def __str__(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference: a collection and what to pick in it.

    Exactly one of ``index`` and ``alias`` is set; a reference without a selector picks
    the alias ``latest``.
    """

    collection: CollectionName
    index: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        selector = f"v{self.index}" if self.index is not None else self.alias
        return f"{self.collection}:{selector}"


def validate_name(value: str, what: str = "name") -> str:
    if not _NAME.fullmatch(value) or value != value.strip(" ") or not value.strip("."):
        raise InvalidArgument(
            f"{what} {quote(value)} is invalid: use 1-{NAME_MAX} letters, digits, spaces, '.', '_' or '-', "
            "with no leading or trailing space and not only dots",
            Reason.REFERENCE_INVALID,
            {"field": what},
        )
    return value


def validate_alias(value: str) -> str:
    """Checks an alias a user may set.

    Raises:
        InvalidArgument: malformed, or reserved for the system ("latest", "vN").
    """
    if not _ALIAS.fullmatch(value):
        raise InvalidArgument(
            f"alias {quote(value)} is invalid: use 1-{ALIAS_MAX} letters, digits, '.', '_' or '-'",
            Reason.REFERENCE_INVALID,
            {"field": "alias"},
        )
    if value == LATEST or re.fullmatch(r"v[0-9]+", value):
        raise InvalidArgument(
            f"alias {quote(value)} is reserved: the registry maintains 'latest' and 'vN' itself",
            Reason.ALIAS_RESERVED,
            {"alias": value},
        )
    return value


def validate_type(value: str) -> str:
    if not _TYPE.fullmatch(value):
        raise InvalidArgument(
            f"type {quote(value)} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-' "
            "(e.g. 'model' or 'dataset')",
            Reason.REFERENCE_INVALID,
            {"field": "type"},
        )
    return value


def _split_path(text: str, what: str, labels: tuple[str, ...], defaults: tuple[str | None, ...]) -> list[str]:
    """Splits a '/'-path into ``labels``, filling omitted leading parts from ``defaults``."""
    if not text:
        raise InvalidArgument(f"{what} is empty", Reason.REFERENCE_INVALID, {"field": what})
    given = text.split("/")
    if len(given) > len(labels):
        raise InvalidArgument(
            f"{what} {quote(text)} has {len(given)} '/'-separated parts; at most {len(labels)} are allowed "
            f"({'/'.join(labels)})",
            Reason.REFERENCE_INVALID,
            {"field": what},
        )
    missing = len(labels) - len(given)
    filled: list[str] = []
    for label, default in zip(labels[:missing], defaults, strict=False):
        if not default:
            raise InvalidArgument(
                f"{what} {quote(text)} names no {label} and no default {label} is set "
                f"(send the mreg-{label} request header or write {'/'.join(labels)})",
                Reason.REFERENCE_INVALID,
                {"field": what},
            )
        filled.append(default)
    parts = filled + given
    for label, part in zip(labels, parts, strict=True):
        validate_name(part, f"{label} of {what} {quote(text)}:")
    return parts


def parse_project(text: str, defaults: Defaults = Defaults()) -> ProjectName:
    """Parses ``[entity/]project``."""
    entity, project = _split_path(text, "project", ("entity", "project"), (defaults.entity,))
    return ProjectName(entity, project)


def parse_collection(text: str, defaults: Defaults = Defaults(), what: str = "collection") -> CollectionName:
    """Parses ``[[entity/]project/]name`` with no selector."""
    if ":" in text:
        raise InvalidArgument(
            f"{what} {quote(text)} must not carry a ':selector' here", Reason.REFERENCE_INVALID, {"field": what}
        )
    entity, project, name = _split_path(text, what, ("entity", "project", "name"), (defaults.entity, defaults.project))
    return CollectionName(entity, project, name)


def parse_selected_reference(text: str, defaults: Defaults, member: str) -> Reference:
    """``parse_reference`` for a deletion, which must name its ``member`` ("version", "link"): a name without a
    selector would pick ``latest`` and delete what the caller never named."""
    if ":" not in text:
        raise InvalidArgument(
            f"name the {member} to delete, e.g. {quote(text + ':v3')} or an alias; "
            f"{quote(text)} has no selector, and a deletion never picks latest by default",
            Reason.REFERENCE_INVALID,
            {"field": "name"},
        )
    return parse_reference(text, defaults)


def parse_reference(text: str, defaults: Defaults = Defaults()) -> Reference:
    """Parses ``[[entity/]project/]name[:selector]``; no selector means ``latest``."""
    path, colon, selector = text.partition(":")
    if colon and not path:
        raise InvalidArgument(
            f"reference {quote(text)} has no name before ':'", Reason.REFERENCE_INVALID, {"field": "reference"}
        )
    if ":" in selector:
        raise InvalidArgument(
            f"reference {quote(text)} has more than one ':'", Reason.REFERENCE_INVALID, {"field": "reference"}
        )
    collection = parse_collection(path, defaults, "reference")
    if not colon:
        return Reference(collection, alias=LATEST)
    if not selector:
        raise InvalidArgument(
            f"reference {quote(text)} ends in ':' with no version or alias after it",
            Reason.REFERENCE_INVALID,
            {"field": "reference"},
        )
    if match := _INDEX.fullmatch(selector):
        return Reference(collection, index=int(match.group(1)))
    if selector == LATEST:
        return Reference(collection, alias=LATEST)
    if re.fullmatch(r"v[1-9][0-9]+", selector):
        # Longer than any index the schema stores (2^31-1): it names nothing, as the contract says.
        raise NotFound(
            f"{quote(text)} names no version: version indexes end at 2147483647",
            Reason.VERSION_NOT_FOUND,
            {"resource": text[:200]},
        )
    if re.fullmatch(r"v[0-9]+", selector):
        raise InvalidArgument(
            f"version selector {quote(selector)} is invalid: write vN without leading zeros",
            Reason.REFERENCE_INVALID,
            {"field": "reference"},
        )
    return Reference(collection, alias=validate_alias(selector))
