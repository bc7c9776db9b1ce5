"""Errors the client raises: one type, carrying the gRPC status code and the server's message."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class MregError(Exception):
    """A registry call failed. ``code`` is the gRPC status code name, e.g. ``NOT_FOUND``."""

    def __init__(self, code: str, message: str, violations: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # (type, subject) of each google.rpc.PreconditionFailure violation the server attached.
        self.violations = violations

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, what: str = "") -> MregError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code == grpc.StatusCode.UNAVAILABLE and what:
            details = f"{what} is unreachable ({details})"
        return cls(code.name, details or "no details", _violations(error))


def _violations(error: grpc.RpcError) -> tuple[tuple[str, str], ...]:
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    found: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found.extend((v.type, v.subject) for v in failure.violations)
    return tuple(found)
