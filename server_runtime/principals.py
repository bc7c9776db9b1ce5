"""Who may do what: principals, roles and token secrets, shared by both services and their domains.

Secrets are 256 random bits, so a plain SHA-256 is enough to store them: nobody can
search that space, which is what slow password hashes defend against, and a fast hash
keeps a lookup per call cheap. Nothing here imports gRPC, so domain code may use it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Generic, TypeVar

SECRET_PREFIX = "mreg_"


class Role(IntEnum):
    """What a token allows; each role includes those below it. Values equal the proto's Role numbers."""

    READER = 1
    WRITER = 2
    MAINTAINER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token's name, role and scope, or one of the two identities below."""

    name: str
    role: Role
    scope: str  # "*", "entity" or "entity/project"
    service: bool = False  # the services' own identity (the shared service secret)
    authenticated: bool = True

    def covers(self, entity: str, project: str | None) -> bool:
        """True if the scope includes the project (or, with ``project`` None, the whole entity)."""
        if self.scope == "*":
            return True
        scope_entity, _, scope_project = self.scope.partition("/")
        if scope_entity != entity:
            return False
        return not scope_project or scope_project == project

    def allows(self, role: Role, entity: str | None = None, project: str | None = None) -> bool:
        """True if the principal holds ``role`` over the project; with ``entity`` None, anywhere."""
        if self.service or self.role >= Role.ADMIN:
            return True
        if self.role < role:
            return False
        return entity is None or self.covers(entity, project)


# Who calls when authentication is off: everything is allowed, and the actor recorded is
# whatever the client declares.
ANONYMOUS = Principal("anonymous", Role.ADMIN, "*", authenticated=False)
SERVICE = Principal("mreg-service", Role.ADMIN, "*", service=True)

CURRENT_PRINCIPAL: ContextVar[Principal] = ContextVar("mreg_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The principal of the RPC this thread serves (ANONYMOUS without authentication)."""
    return CURRENT_PRINCIPAL.get()


def new_secret() -> str:
    """A fresh token secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What is stored of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(presented: str, expected: str) -> bool:
    """Compares secrets in constant time."""
    return hmac.compare_digest(presented.encode(), expected.encode())


class AuthError(Exception):
    """A refused call; ``code`` is UNAUTHENTICATED or PERMISSION_DENIED, ``reason`` its ErrorInfo reason."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class Unauthenticated(AuthError):
    code = "UNAUTHENTICATED"


class PermissionDenied(AuthError):
    code = "PERMISSION_DENIED"


def denied(principal: Principal, role: Role, scope: str) -> PermissionDenied:
    """The refusal of a call that needs ``role`` over ``scope`` ("*" for anywhere)."""
    where = "any project" if scope == "*" else scope
    return PermissionDenied(
        f"{principal.name} ({principal.role.label} of {principal.scope}) may not do this: "
        f"it needs the {role.label} role for {where}",
        "PERMISSION_DENIED",
        {"principal": principal.name, "required_role": role.name, "scope": scope},
    )


def bearer_secret(metadata: Mapping[str, str]) -> str | None:
    """The secret of an ``authorization: Bearer <secret>`` header, or None if there is none."""
    value = metadata.get("authorization")
    if value is None:
        return None
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("the authorization header must be 'Bearer <token>'", "TOKEN_INVALID")
    return secret.strip()


def write_secret_file(path: Path, secret: str) -> None:
    """Writes a secret to a file only its owner can read (mode 0600), replacing any earlier one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    os.replace(temporary, path)


def read_or_create_secret_file(path: Path) -> str:
    """The secret in ``path``, creating the file (mode 0600) with a fresh secret if it does not exist."""
    if not path.exists():
        write_secret_file(path, new_secret())
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty; delete it to have a new secret made, or write the shared one there")
    return secret


T = TypeVar("T")


class ExpiringCache(Generic[T]):
    """What a secret grants, remembered for ``seconds``: how long a revocation may take to reach a service.

    Misses are remembered too (a flood of bad tokens costs one lookup each per period), and the
    cache empties itself at ``limit`` entries rather than growing without bound.
    """

    def __init__(self, seconds: float, limit: int = 10_000) -> None:
        self._seconds = seconds
        self._limit = limit
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[str], T]) -> T:
        """The cached value for ``key``, or ``load(key)`` (outside the lock) once the entry is older than allowed."""
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self._seconds:
            return cached[1]
        value = load(key)
        with self._lock:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[key] = (now, value)
        return value
