"""Tokens: creating, listing and revoking them, and finding the one a secret names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mreg.metadata_service.catalog.common import Caller
from mreg.metadata_service.domain import Page
from mreg.metadata_service.errors import AlreadyExists, InvalidArgument, NotFound, Reason
from mreg.metadata_service.limits import quote
from mreg.metadata_service.models import Token, utcnow
from mreg.metadata_service.pagination import decode_token, encode_token, name_key, page_size
from mreg.metadata_service.references import Defaults, parse_project, validate_name
from mreg.metadata_service.unit_of_work import Database, UnitOfWork
from mreg.server_runtime.principals import Principal, Role, hash_secret, new_secret

_TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_name(name: str) -> None:
    if not _TOKEN_NAME.fullmatch(name):
        raise InvalidArgument(f"token name {quote(name)} is invalid: use 1-64 letters, digits, '.', '_' or '-'")


# The name of the admin token written when authentication is first turned on.
BOOTSTRAP_ADMIN = "admin"


@dataclass(frozen=True)
class TokenView:
    name: str
    role: Role
    scope: str
    create_time: datetime
    expire_time: datetime | None
    revoke_time: datetime | None
    creator: str

    def refusal(self, now: datetime) -> Reason | None:
        """Why the token no longer works (revoked, expired), or None while it does."""
        if self.revoke_time is not None:
            return Reason.TOKEN_REVOKED
        if self.expire_time is not None and self.expire_time <= now:
            return Reason.TOKEN_EXPIRED
        return None

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.scope)


def _view(row: Token) -> TokenView:
    return TokenView(row.name, Role(row.role), row.scope, row.created_at, row.expires_at, row.revoked_at, row.creator)


def _validate_scope(role: Role, scope: str) -> str:
    if role is Role.ADMIN:
        if scope not in ("", "*"):
            raise InvalidArgument(f"an admin token's scope is '*' (every entity), not {quote(scope)}")
        return "*"
    if "/" in scope:
        project = parse_project(scope, Defaults())
        return f"{project.entity}/{project.project}"
    if not scope:
        raise InvalidArgument("a token needs a scope: an entity ('acme') or a project ('acme/vision')")
    return validate_name(scope, "entity")


class Tokens:
    """The token table. Secrets are returned once, by :meth:`create`; only their hashes are stored."""

    def __init__(self, database: Database) -> None:
        self.db = database

    def create(
        self, caller: Caller, name: str, role: int, scope: str, expire_time: datetime | None = None
    ) -> tuple[TokenView, str]:
        _check_name(name)
        if role not in {r.value for r in Role}:
            raise InvalidArgument("a token needs a role: reader, writer, maintainer or admin")
        clean_scope = _validate_scope(Role(role), scope)
        if expire_time is not None and expire_time <= utcnow():
            raise InvalidArgument("the token's expiry must lie in the future")
        secret = new_secret()
        values: dict[str, Any] = {
            "name": name,
            "secret_hash": hash_secret(secret),
            "role": int(role),
            "scope": clean_scope,
            "creator": caller.actor,
            "created_at": utcnow(),
            "expires_at": expire_time,
        }

        def work(uow: UnitOfWork) -> TokenView:
            row = uow.repo.create_token(values)
            if row is None:
                raise AlreadyExists(f"a token named {quote(name)} exists already", Reason.TOKEN_EXISTS)
            return _view(row)

        # Not recorded as an event: events are readable by every reader of the resource.
        return self.db.run(work, write=True, actor=caller.actor), secret

    def list(self, size: int, token: str) -> Page[TokenView]:
        limit = page_size(size)
        after = decode_token(token, "tokens", name_key)

        def work(uow: UnitOfWork) -> Page[TokenView]:
            rows = uow.repo.list_tokens(after, limit + 1)
            tokens = tuple(encode_token("tokens", r.name) for r in rows[:limit])
            return Page(tuple(_view(r) for r in rows[:limit]), tokens[-1] if len(rows) > limit else "", tokens)

        return self.db.run(work, write=False)

    def revoke(self, caller: Caller, name: str) -> TokenView:
        _check_name(name)  # a name no token can have is a wrong argument, not a token not found

        def work(uow: UnitOfWork) -> TokenView:
            row = uow.repo.find_token(name, for_update=True)
            if row is None:
                raise NotFound(f"no token is named {quote(name)}", Reason.TOKEN_NOT_FOUND, {"resource": name})
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _view(row)

        return self.db.run(work, write=True, actor=caller.actor)

    def by_secret(self, secret: str) -> TokenView | None:
        """The token a secret names, active or not; None for a secret no token has."""
        digest = hash_secret(secret)
        return self.db.run(lambda uow: _maybe_view(uow.repo.find_token_by_hash(digest)), write=False)

    def bootstrap_admin(self) -> str | None:
        """Creates the first admin token if there is no token at all; returns its secret (else None)."""
        secret = new_secret()

        def work(uow: UnitOfWork) -> bool:
            if uow.repo.has_tokens():
                return False
            values = {
                "name": BOOTSTRAP_ADMIN,
                "secret_hash": hash_secret(secret),
                "role": int(Role.ADMIN),
                "scope": "*",
                "creator": "mreg (first start with authentication)",
                "created_at": utcnow(),
                "expires_at": None,
            }
            return uow.repo.create_token(values) is not None

        return secret if self.db.run(work, write=True, actor="mreg") else None


def _maybe_view(row: Token | None) -> TokenView | None:
    return None if row is None else _view(row)
