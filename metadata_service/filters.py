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

from mreg.metadata_service.errors import InvalidArgument
from mreg.metadata_service.limits import quote

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 32

SCALAR_FIELDS = {"index", "size_bytes", "file_count"}
TIME_FIELDS = {"create_time", "commit_time"}
EQUALITY_FIELDS = {"alias", "tag", "state", "run"}
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


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            start = len(text) - len(text[position:].lstrip())
            raise InvalidArgument(f"filter: unexpected character {text[start]!r} at position {start + 1}")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise InvalidArgument(f"filter: unexpected end at position {len(self.text) + 1}")
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
            raise InvalidArgument(
                f"filter: unexpected {quote(extra.text)} at position {extra.position}; expected AND or OR"
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
            raise InvalidArgument(f"filter: nested deeper than {MAX_DEPTH} levels")
        try:
            if self.keyword("NOT"):
                return Not(self.parse_unary())
            token = self.peek()
            if token is not None and token.kind == "lparen":
                self.take()
                node = self.parse_or()
                closing = self.take()
                if closing.kind != "rparen":
                    raise InvalidArgument(f"filter: expected ')' at position {closing.position}")
                return node
            return self.parse_comparison()
        finally:
            self.depth -= 1

    def parse_comparison(self) -> Comparison:
        token = self.take()
        if token.kind != "word":
            raise InvalidArgument(
                f"filter: expected a field name at position {token.position}, found {quote(token.text)}"
            )
        field, path = parse_field(token.text, token.position, order=False)
        op_token = self.take()
        if op_token.kind != "op":
            raise InvalidArgument(f"filter: expected an operator (= != < <= > >=) at position {op_token.position}")
        if field in EQUALITY_FIELDS and op_token.text not in ("=", "!="):
            raise InvalidArgument(f"filter: {field} takes only = or != (position {op_token.position})")
        value_token = self.take()
        value = self.parse_value(field, value_token)
        return Comparison(field, path, op_token.text, value)

    def parse_value(self, field: str, token: _Token) -> Value:
        where = f"at position {token.position}"
        if token.kind == "string":
            text = re.sub(r"\\(.)", r"\1", token.text[1:-1])
            if field in TIME_FIELDS:
                try:
                    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError as e:
                    raise InvalidArgument(f"filter: {quote(text)} {where} is not an RFC 3339 time") from e
                if moment.tzinfo is None:
                    raise InvalidArgument(f"filter: time {quote(text)} {where} needs a zone, e.g. 'Z'")
                try:
                    return moment.astimezone(UTC)
                except OverflowError as e:
                    raise InvalidArgument(f"filter: time {quote(text)} {where} is outside the years 1 to 9999") from e
            if field in SCALAR_FIELDS:
                raise InvalidArgument(f"filter: {field} compares with a number, not a string ({where})")
            if field == "state" and text not in STATES:
                raise InvalidArgument(f"filter: state is 'committed' or 'deleted', not {quote(text)} ({where})")
            return text
        if token.kind == "number":
            if field not in SCALAR_FIELDS and field != "metadata":
                raise InvalidArgument(f"filter: {field} compares with a quoted string, not a number ({where})")
            number = float(token.text)
            if not math.isfinite(number):
                raise InvalidArgument(f"filter: number {quote(token.text)} {where} is too large")
            return number
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            if field != "metadata":
                raise InvalidArgument(f"filter: only metadata fields compare with true/false ({where})")
            return token.text.lower() == "true"
        raise InvalidArgument(f"filter: expected a value {where}, found {quote(token.text)}")


def parse_field(text: str, position: int, *, order: bool) -> tuple[str, tuple[str, ...]]:
    if text.startswith("metadata."):
        keys = tuple(text.split(".")[1:])
        if not keys or not all(_METADATA_KEY.fullmatch(k) for k in keys):
            raise InvalidArgument(f"invalid metadata key {quote(text)} at position {position}")
        return "metadata", keys
    allowed = ORDER_FIELDS if order else SCALAR_FIELDS | TIME_FIELDS | EQUALITY_FIELDS
    if text not in allowed:
        raise InvalidArgument(
            f"unknown field {quote(text)} at position {position}; "
            f"use one of {', '.join(sorted(allowed))} or metadata.KEY"
        )
    return text, ()


def parse_filter(text: str) -> Node | None:
    """Parses a filter; None for an empty one."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return None
    return _Parser(text).parse()


def parse_order_by(text: str) -> OrderKey:
    """Parses ``KEY [asc|desc]``; empty means ``index desc``."""
    words = text.split()
    if not words:
        return OrderKey("index", (), True)
    if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
        raise InvalidArgument(f"order_by {quote(text)} is invalid: write KEY, KEY asc or KEY desc")
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
