"""Domain errors of the blob service.

Code below the servicer raises these; the servicer maps each to a gRPC status in one
place, so no layer but the servicer knows about gRPC. Every error also carries a stable
``reason`` (a :class:`Reason`, the name of an ``ErrorReason`` value of blob_service.proto)
and ``metadata``, which travel as a google.rpc.ErrorInfo in the domain :data:`ERROR_DOMAIN`.
"""

from __future__ import annotations

from enum import StrEnum

# ErrorInfo.domain of every error of the blob service.
ERROR_DOMAIN = "blob.mreg.dev"


class Reason(StrEnum):
    """The reasons the blob service gives: exactly the values of ``mreg.blob.v1.ErrorReason``
    (but ERROR_REASON_UNSPECIFIED); tests/test_error_reasons.py keeps the two equal."""

    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    FIELD_INVALID = "FIELD_INVALID"
    DIGEST_INVALID = "DIGEST_INVALID"
    RESOURCE_NAME_INVALID = "RESOURCE_NAME_INVALID"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    BLOB_NOT_FOUND = "BLOB_NOT_FOUND"
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"
    WRITE_OFFSET_INVALID = "WRITE_OFFSET_INVALID"
    READ_RANGE_INVALID = "READ_RANGE_INVALID"
    BLOB_CORRUPT = "BLOB_CORRUPT"
    STORAGE_FULL = "STORAGE_FULL"
    STREAM_LIMIT_REACHED = "STREAM_LIMIT_REACHED"
    STREAM_IDLE = "STREAM_IDLE"
    UPLOAD_BUSY = "UPLOAD_BUSY"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class BlobError(Exception):
    """Base class; ``code`` names the gRPC status code the error maps to.

    Args:
        message: what went wrong, for people; clients branch on ``reason``, never on it.
        reason: why, for programs; each class has a default for raise sites with nothing
            more specific to say.
        metadata: the facts the proto documents beside the reason (e.g. "field").
    """

    code = "UNKNOWN"
    domain = ERROR_DOMAIN
    default_reason = Reason.FIELD_INVALID

    def __init__(self, message: str, reason: Reason | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(BlobError):
    code = "INVALID_ARGUMENT"
    default_reason = Reason.FIELD_INVALID


class NotFound(BlobError):
    code = "NOT_FOUND"
    default_reason = Reason.BLOB_NOT_FOUND


class OutOfRange(BlobError):
    code = "OUT_OF_RANGE"
    default_reason = Reason.READ_RANGE_INVALID


class DataLoss(BlobError):
    code = "DATA_LOSS"
    default_reason = Reason.BLOB_CORRUPT


class Unavailable(BlobError):
    """The storage backend cannot be reached; the call may succeed if retried."""

    code = "UNAVAILABLE"
    default_reason = Reason.STORAGE_UNAVAILABLE


class Aborted(BlobError):
    """A concurrent operation got in the way; retry after QueryWriteStatus."""

    code = "ABORTED"
    default_reason = Reason.UPLOAD_BUSY


class StorageFull(BlobError):
    """The store has no room (a full disk, a quota, an S3 server out of space)."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = Reason.STORAGE_FULL
