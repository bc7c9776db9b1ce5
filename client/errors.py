"""Errors the client raises: MregError, carrying a gRPC status code name and a message, and PushInterrupted.

Every MregError is an instance of the subclass for its code (``NotFound`` for NOT_FOUND,
``FailedPrecondition``, ...), so ``except NotFound:`` reads as what it catches;
``MregError("NOT_FOUND", ...)`` itself builds a ``NotFound``.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class MregError(Exception):
    """A registry call failed.

    ``code`` is the gRPC status code name, e.g. ``NOT_FOUND``; ``reason`` the stable
    reason of the google.rpc.ErrorInfo the server attached (e.g. ``VERSION_IN_USE``; ""
    for local failures), with its ``metadata``. Branch on ``reason``, not on the message.
    """

    _classes: ClassVar[dict[str, type[MregError]]] = {}

    def __init_subclass__(cls, code: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code:
            MregError._classes[code] = cls

    def __new__(cls, code: str, *args: Any, **kwargs: Any) -> MregError:
        chosen = MregError._classes.get(code, cls) if cls is MregError else cls
        return super().__new__(chosen)

    def __init__(
        self,
        code: str,
        message: str,
        violations: tuple[tuple[str, str], ...] = (),
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # (type, subject) of each google.rpc.PreconditionFailure violation the server attached.
        self.violations = violations
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # An exception pickles as its class called with ``args``, which here hold only the joined text: a
        # process pool could not rebuild the error its worker raised (and broke instead of reporting it).
        state = {"reason": self.reason, "metadata": self.metadata}
        return type(self), (self.code, self.message, self.violations), state

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, what: str = "") -> MregError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        violations, info = _details(error)
        if code == grpc.StatusCode.UNAVAILABLE and what and not (info and info.reason):
            # No reason attached: the transport failed. With one, the service answered, and its message says
            # what it could not reach (its database, the blob service, its store).
            details = f"{what} is unreachable ({details}){_tls_hint(details)}"
        return cls(
            code.name,
            details or "no details",
            violations,
            reason=info.reason if info else "",
            metadata=dict(info.metadata) if info else None,
        )

    @classmethod
    def from_status(cls, status: status_pb2.Status, message: str) -> MregError:
        """The error a google.rpc.Status (e.g. one item's of a batch response) describes, with ``message``."""
        code = next((c.name for c in grpc.StatusCode if c.value[0] == status.code), f"CODE_{status.code}")
        violations, info = _unpack(status)
        return cls(
            code,
            message,
            violations,
            reason=info.reason if info else "",
            metadata=dict(info.metadata) if info else None,
        )

    def with_message(self, message: str) -> MregError:
        """The same error (code, reason, metadata, violations) with another message, e.g. naming a file."""
        return MregError(self.code, message, self.violations, reason=self.reason, metadata=self.metadata)


# Transport failures that are a TLS setting to fix rather than a server to wait for, by what gRPC's message says
# (BoringSSL's reason names), and what to do about each.
_TLS_HINTS = (
    (
        "certificate has expired",
        "its TLS certificate has expired (or this machine's clock is wrong): renew it, or set the clock",
    ),
    (
        "certificate is not yet valid",
        "its TLS certificate is not valid yet (or this machine's clock is wrong): check the clocks",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "its TLS certificate is not signed by a CA this client trusts: give the CA certificate that signed it "
        "(--ca-cert or MREG_CA_CERT)",
    ),
    (
        "WRONG_VERSION_NUMBER",
        "it does not speak TLS on that address: connect without --tls/--ca-cert (MREG_TLS, MREG_CA_CERT), or "
        "give the address where it serves TLS",
    ),
    (
        "Hostname Verification Check failed",
        "its TLS certificate does not name the host this client dialled: use a name or address the certificate lists",
    ),
)


def _tls_hint(details: str) -> str:
    """What to change, for a transport failure that a TLS setting explains (the first that matches: an expired
    certificate fails verification too); "" otherwise."""
    return next((f"; {hint}" for marker, hint in _TLS_HINTS if marker in details), "")


class InvalidArgument(MregError, code="INVALID_ARGUMENT"):
    """A malformed name, reference, filter or value: fix the request."""


class NotFound(MregError, code="NOT_FOUND"):
    """Nothing has that name, alias or index (or the caller may not see it)."""


class AlreadyExists(MregError, code="ALREADY_EXISTS"):
    """The name is taken."""


class FailedPrecondition(MregError, code="FAILED_PRECONDITION"):
    """The registry is not in the state the call needs: a compare-and-set lost, content is missing, a version in use."""


class PermissionDenied(MregError, code="PERMISSION_DENIED"):
    """The caller's token lacks the role or scope the call needs (``metadata["required_role"]``)."""


class Unauthenticated(MregError, code="UNAUTHENTICATED"):
    """No token, or one that is unknown, expired or revoked."""


class Unavailable(MregError, code="UNAVAILABLE"):
    """A service (or its database or store) cannot be reached; retrying later may work."""


class DataLoss(MregError, code="DATA_LOSS"):
    """Stored content does not match its digest; nothing unverified was written."""


class ResourceExhausted(MregError, code="RESOURCE_EXHAUSTED"):
    """A size or rate limit, or a full disk."""


class Aborted(MregError, code="ABORTED"):
    """A concurrent change got in the way; the same call again is safe."""


class DeadlineExceeded(MregError, code="DEADLINE_EXCEEDED"):
    """The call took longer than its timeout."""


class Cancelled(MregError, code="CANCELLED"):
    """The call was cancelled, e.g. a confirmation was declined."""


def _details(error: grpc.RpcError) -> tuple[tuple[tuple[str, str], ...], error_details_pb2.ErrorInfo | None]:
    """The PreconditionFailure violations and the ErrorInfo in an error's status details."""
    try:
        status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    except ValueError:  # a status whose details disagree with its code: none to read
        status = None
    return _unpack(status)


def _unpack(
    status: status_pb2.Status | None,
) -> tuple[tuple[tuple[str, str], ...], error_details_pb2.ErrorInfo | None]:
    found: list[tuple[str, str]] = []
    info: error_details_pb2.ErrorInfo | None = None
    for detail in status.details if status is not None else ():
        failure = error_details_pb2.PreconditionFailure()
        error_info = error_details_pb2.ErrorInfo()
        if detail.Unpack(failure):
            found.extend((v.type, v.subject) for v in failure.violations)
        elif detail.Unpack(error_info):
            info = error_info
    return tuple(found), info


# errno -> the status code name a local failure is reported with; anything else is FAILED_PRECONDITION
# (the local system is not in a state the command needs).
_ERRNO_CODES = {
    errno.ENOENT: "NOT_FOUND",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
    errno.EROFS: "PERMISSION_DENIED",
    errno.ENOSPC: "RESOURCE_EXHAUSTED",
    errno.EDQUOT: "RESOURCE_EXHAUSTED",
    errno.EMFILE: "RESOURCE_EXHAUSTED",
    errno.ENFILE: "RESOURCE_EXHAUSTED",
    errno.ENAMETOOLONG: "INVALID_ARGUMENT",
}


def local_error(error: OSError, what: str = "") -> MregError:
    """A local file-system failure as an MregError, e.g. ``PERMISSION_DENIED: /x: Permission denied``."""
    code = _ERRNO_CODES.get(error.errno or 0, "FAILED_PRECONDITION")
    reason = error.strerror or str(error) or type(error).__name__
    subject = what or (str(error.filename) if error.filename is not None else "")
    return MregError(code, f"{subject}: {reason}" if subject else reason)


class PushInterrupted(KeyboardInterrupt):
    """A push was interrupted (Ctrl-C); what was stored stays, and the same push resumes it.

    A KeyboardInterrupt, so code that handles Ctrl-C keeps working; ``stored_bytes`` of
    ``total_bytes`` of the version's content are in the blob service.
    """

    def __init__(self, stored_bytes: int, total_bytes: int) -> None:
        super().__init__(f"{stored_bytes} of {total_bytes} bytes stored")
        self.stored_bytes = stored_bytes
        self.total_bytes = total_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return PushInterrupted, (self.stored_bytes, self.total_bytes)
