"""Errors the client raises: one type, carrying the gRPC status code and the server's message."""

from __future__ import annotations

import grpc


class MregError(Exception):
    """A registry call failed. ``code`` is the gRPC status code name, e.g. ``NOT_FOUND``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, what: str = "") -> MregError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code == grpc.StatusCode.UNAVAILABLE and what:
            details = f"{what} is unreachable ({details})"
        return cls(code.name, details or "no details")
