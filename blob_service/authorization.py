"""Who may call which blob RPC, and how a token is checked: by asking the metadata service.

Blob content is addressed by digest, not by project, so the blob service asks only
whether a caller may read (READER) or write (WRITER) somewhere. ListBlobs and DeleteBlobs
see and remove content across every project: only the metadata service's own identity
(the secret the two services share) and ADMIN may call them.

Why ask the metadata service instead of verifying a signed credential: tokens are
revoked in the metadata database, and a signed credential stays valid until it expires,
so a revocation could only take effect as fast as credentials expire, and every client
would have to renew them. Asking keeps one source of truth, costs one call per token per
cache period (30 s by default), and keeps the blob service free of any database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc

from mreg.client.channels import Credentials, open_channel
from mreg.metadata.v1 import token_service_pb2 as token_pb
from mreg.metadata.v1 import token_service_pb2_grpc as token_grpc
from mreg.server_runtime.principals import (
    SERVICE,
    AuthError,
    ExpiringCache,
    Principal,
    Role,
    Unauthenticated,
    denied,
    same_secret,
)

INTROSPECTION_TIMEOUT = 10.0

RULES: dict[str, Role] = {
    "GetCapabilities": Role.READER,
    "FindMissingBlobs": Role.READER,
    "Read": Role.READER,
    "BatchReadBlobs": Role.READER,
    "Write": Role.WRITER,
    "QueryWriteStatus": Role.WRITER,
    "BatchUpdateBlobs": Role.WRITER,
    # Every project's content: the metadata service's identity, or ADMIN.
    "ListBlobs": Role.ADMIN,
    "DeleteBlobs": Role.ADMIN,
}


def authorize(method: str, request: Any, principal: Principal, headers: Mapping[str, str]) -> None:
    """Raises PermissionDenied unless ``principal`` holds the method's role somewhere."""
    role = RULES[method]
    if not principal.allows(role):
        raise denied(principal, role, "*")


class Unreachable(AuthError):
    """The metadata service cannot be asked about a token that is not in the cache."""

    code = "UNAVAILABLE"


class IntrospectingAuthenticator:
    """Turns a bearer secret into a principal by asking the metadata service, caching answers.

    Args:
        metadata_addr: returns the metadata service's address (it may be known only once
            that service is up).
        service_secret: the shared secret: the caller it names is the metadata service, and
            it authenticates this service's own introspection calls.
    """

    def __init__(
        self,
        metadata_addr: Callable[[], str],
        service_secret: str,
        cache_seconds: float,
        credentials: Credentials | None = None,
    ) -> None:
        self._metadata_addr = metadata_addr
        self._service_secret = service_secret
        self._credentials = credentials or Credentials()
        self._cache: ExpiringCache[token_pb.IntrospectTokenResponse] = ExpiringCache(cache_seconds)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: token_grpc.TokenServiceStub | None = None

    def __call__(self, secret: str | None) -> Principal:
        if secret is None:
            raise Unauthenticated(
                "this call needs a token: send the header 'authorization: Bearer <token>'", "TOKEN_MISSING"
            )
        if same_secret(secret, self._service_secret):
            return SERVICE
        answer = self._cache.get(secret, self._introspect)
        token = answer.token
        if not answer.HasField("token"):
            raise Unauthenticated("the token is not valid: no token has this secret", "TOKEN_INVALID")
        if not answer.active and token.HasField("revoke_time"):
            raise Unauthenticated(f"token {token.name!r} was revoked", "TOKEN_REVOKED", {"principal": token.name})
        if not answer.active:
            raise Unauthenticated(f"token {token.name!r} has expired", "TOKEN_EXPIRED", {"principal": token.name})
        if token.HasField("expire_time") and token.expire_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC):
            raise Unauthenticated(f"token {token.name!r} has expired", "TOKEN_EXPIRED", {"principal": token.name})
        return Principal(token.name, Role(int(token.role)), token.scope)

    def _introspect(self, secret: str) -> token_pb.IntrospectTokenResponse:
        try:
            return self._token_service().IntrospectToken(
                token_pb.IntrospectTokenRequest(secret=secret), timeout=INTROSPECTION_TIMEOUT
            )
        except grpc.RpcError as e:
            raise Unreachable(
                f"cannot check the token with the metadata service at {self._metadata_addr()}: {e.code().name}",
                "STORAGE_UNAVAILABLE",
            ) from e

    def _token_service(self) -> token_grpc.TokenServiceStub:
        with self._lock:
            if self._stub is None:
                credentials = Credentials(
                    token=self._service_secret,
                    tls=self._credentials.tls,
                    ca_cert=self._credentials.ca_cert,
                    client_cert=self._credentials.client_cert,
                    client_key=self._credentials.client_key,
                )
                self._channel = open_channel(self._metadata_addr(), credentials)
                self._stub = token_grpc.TokenServiceStub(self._channel)
            return self._stub

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
