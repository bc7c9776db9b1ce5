"""The version filter and ordering grammar, parsed into a small syntax tree.

Filters (for ListVersions)::

    filter     := or
    or         := and ("OR" and)*
    and        := unary ("AND" unary)*
    unary      := "NOT" unary | "(" or ")" | comparison
    comparison := field op value
    field      := "index" | "state" | "alias" | "tag" | "create_time" | "commit_time"
                | "size_bytes" | "file_count" | "run" | "metadata." key ("." key)*
    op         := "=" | "!=" | "<" | "<=" | ">" | ">="
    value      := number | "double-quoted" | 'single-quoted' | true | false

Examples: ``metadata.val_loss < 0.2 AND tag = "fp16"``, ``alias = "best" OR index >= 10``,
``create_time > "2026-01-01T00:00:00Z"``. ``alias``, ``tag``, ``state`` and ``run`` take
``=`` and ``!=`` only; ``state`` is ``committed`` or ``deleted`` (only committed versions
are listed unless the filter names a state). Keywords are case-insensitive.

Ordering: comma-free ``KEY [asc|desc]`` with KEY one of ``index`` (the default,
descending), ``create_time``, ``size_bytes`` or ``metadata.KEY``; ties go by index,
newest first, and versions lacking a metadata key sort last.

Parsing never touches SQL: the repository compiles the tree with bound parameters.
Errors are InvalidArgument naming the position (counted from 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from mreg.metadata_service.errors import InvalidArgument, Reason
from mreg.metadata_service.limits import quote

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 32

ORDER_FIELDS = {"index", "create_time", "size_bytes"}
STATES = {"committed", "deleted"}
OPERATORS = ("!=", "<=", ">=", "=", "<", ">")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) |
        (?P<op>!=|<=|>=|=|<|>) |
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
        (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])) |
        (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE,
)
_METADATA_KEY = re.compile(r"[A-Za-z0-9_\-]{1,128}")

Value = str | float | bool | datetime


@dataclass(frozen=True)
class Subject:
    """The fields a filter may compare, by how they compare."""

    what: str
    numbers: frozenset[str]  # compared with numbers
    times: frozenset[str]  # compared with RFC 3339 strings
    labels: frozenset[str]  # only = and !=, with strings
    strings: frozenset[str] = frozenset()  # every operator, with strings; = "prefix*" matches a prefix
    metadata: bool = False  # metadata.KEY fields

    @property
    def fields(self) -> frozenset[str]:
        return self.numbers | self.times | self.labels | self.strings


VERSIONS = Subject(
    "versions",
    numbers=frozenset({"index", "size_bytes", "file_count"}),
    times=frozenset({"create_time", "commit_time"}),
    labels=frozenset({"alias", "tag", "state", "run"}),
    metadata=True,
)
COLLECTIONS = Subject(
    "collections",
    numbers=frozenset(),
    times=frozenset({"create_time"}),
    labels=frozenset({"type", "tag"}),
    strings=frozenset({"name"}),
)


@dataclass(frozen=True, slots=True)
class Comparison:
    field: str
    path: tuple[str, ...]
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


Node = Comparison | And | Or | Not


@dataclass(frozen=True, slots=True)
class OrderKey:
    field: str
    path: tuple[str, ...]
    descending: bool


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    position: int


def _invalid(message: str, position: int | None = None) -> InvalidArgument:
    """A malformed filter or order_by: FILTER_INVALID, with the 1-based position where one is known."""
    return InvalidArgument(message, Reason.FILTER_INVALID, {} if position is None else {"position": str(position)})


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            start = len(text) - len(text[position:].lstrip())
            raise _invalid(f"filter: unexpected character {text[start]!r} at position {start + 1}", start + 1)
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, subject: Subject) -> None:
        self.text = text
        self.subject = subject
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise _invalid(f"filter: unexpected end at position {len(self.text) + 1}", len(self.text) + 1)
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() == word:
            self.index += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.parse_or()
        if (extra := self.peek()) is not None:
            raise _invalid(
                f"filter: unexpected {quote(extra.text)} at position {extra.position}; expected AND or OR",
                extra.position,
            )
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.keyword("OR"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_unary()]
        while self.keyword("AND"):
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _invalid(f"filter: nested deeper than {MAX_DEPTH} levels")
        try:
            if self.keyword("NOT"):
                return Not(self.parse_unary())
            token = self.peek()
            if token is not None and token.kind == "lparen":
                self.take()
                node = self.parse_or()
                closing = self.take()
                if closing.kind != "rparen":
                    raise _invalid(f"filter: expected ')' at position {closing.position}", closing.position)
                return node
            return self.parse_comparison()
        finally:
            self.depth -= 1

    def parse_comparison(self) -> Comparison:
        token = self.take()
        if token.kind != "word":
            raise _invalid(
                f"filter: expected a field name at position {token.position}, found {quote(token.text)}", token.position
            )
        field, path = parse_field(token.text, token.position, order=False, subject=self.subject)
        op_token = self.take()
        if op_token.kind != "op":
            raise _invalid(
                f"filter: expected an operator (= != < <= > >=) at position {op_token.position}", op_token.position
            )
        if field in self.subject.labels and op_token.text not in ("=", "!="):
            raise _invalid(f"filter: {field} takes only = or != (position {op_token.position})", op_token.position)
        value_token = self.take()
        value = self.parse_value(field, value_token)
        return Comparison(field, path, op_token.text, value)

    def parse_value(self, field: str, token: _Token) -> Value:
        where = f"at position {token.position}"
        if token.kind == "string":
            text = re.sub(r"\\(.)", r"\1", token.text[1:-1])
            if field in self.subject.times:
                try:
                    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError as e:
                    raise _invalid(f"filter: {quote(text)} {where} is not an RFC 3339 time", token.position) from e
                if moment.tzinfo is None:
                    raise _invalid(f"filter: time {quote(text)} {where} needs a zone, e.g. 'Z'", token.position)
                try:
                    return moment.astimezone(UTC)
                except OverflowError as e:
                    raise _invalid(
                        f"filter: time {quote(text)} {where} is outside the years 1 to 9999", token.position
                    ) from e
            if field in self.subject.numbers:
                raise _invalid(f"filter: {field} compares with a number, not a string ({where})", token.position)
            if field == "state" and text not in STATES:
                raise _invalid(
                    f"filter: state is 'committed' or 'deleted', not {quote(text)} ({where})", token.position
                )
            return text
        if token.kind == "number":
            if field not in self.subject.numbers and field != "metadata":
                raise _invalid(f"filter: {field} compares with a quoted string, not a number ({where})", token.position)
            number = float(token.text)
            if not math.isfinite(number):
                raise _invalid(f"filter: number {quote(token.text)} {where} is too large", token.position)
            return number
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            if field != "metadata":
                raise _invalid(f"filter: only metadata fields compare with true/false ({where})", token.position)
            return token.text.lower() == "true"
        raise _invalid(f"filter: expected a value {where}, found {quote(token.text)}", token.position)


def parse_field(text: str, position: int, *, order: bool, subject: Subject = VERSIONS) -> tuple[str, tuple[str, ...]]:
    if subject.metadata and text.startswith("metadata."):
        keys = tuple(text.split(".")[1:])
        if not keys or not all(_METADATA_KEY.fullmatch(k) for k in keys):
            raise _invalid(f"invalid metadata key {quote(text)} at position {position}", position)
        return "metadata", keys
    allowed = ORDER_FIELDS if order else subject.fields
    if text not in allowed:
        hint = " or metadata.KEY" if subject.metadata else ""
        raise _invalid(
            f"unknown field {quote(text)} at position {position}; use one of {', '.join(sorted(allowed))}{hint}",
            position,
        )
    return text, ()


def parse_filter(text: str, subject: Subject = VERSIONS) -> Node | None:
    """Parses a filter over ``subject``'s fields; None for an empty one."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _invalid(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return None
    return _Parser(text, subject).parse()


def parse_order_by(text: str) -> OrderKey:
    """Parses ``KEY [asc|desc]``; empty means ``index desc``."""
    words = text.split()
    if not words:
        return OrderKey("index", (), True)
    if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
        raise _invalid(f"order_by {quote(text)} is invalid: write KEY, KEY asc or KEY desc")
    field, path = parse_field(words[0], 1, order=True)
    descending = len(words) == 2 and words[1].lower() == "desc"
    return OrderKey(field, path, descending)


def mentions_state(node: Node | None) -> bool:
    if node is None:
        return False
    if isinstance(node, Comparison):
        return node.field == "state"
    if isinstance(node, Not):
        return mentions_state(node.item)
    return any(mentions_state(item) for item in node.items)
