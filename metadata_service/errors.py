"""Domain errors of the metadata service.

Code below the servicer raises these; the servicer maps each to the gRPC status named by
``code`` in one place, so no layer but the servicer knows about gRPC. Every error also
carries a stable ``reason`` (a :class:`Reason`, the name of an ``ErrorReason`` value of
metadata_service.proto) and ``metadata`` (facts a client can act on), which travel as a
google.rpc.ErrorInfo in the domain :data:`ERROR_DOMAIN`.
"""

from __future__ import annotations

from enum import StrEnum

# ErrorInfo.domain of every error of the metadata service.
ERROR_DOMAIN = "metadata.mreg.dev"


class Reason(StrEnum):
    """The reasons the metadata service gives: exactly the values of ``mreg.metadata.v1.ErrorReason``
    (but ERROR_REASON_UNSPECIFIED); tests/test_error_reasons.py keeps the two equal."""

    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    FIELD_INVALID = "FIELD_INVALID"
    REFERENCE_INVALID = "REFERENCE_INVALID"
    ALIAS_RESERVED = "ALIAS_RESERVED"
    FILTER_INVALID = "FILTER_INVALID"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    METADATA_INVALID = "METADATA_INVALID"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    PROJECT_NOT_FOUND = "PROJECT_NOT_FOUND"
    ARTIFACT_NOT_FOUND = "ARTIFACT_NOT_FOUND"
    REGISTERED_MODEL_NOT_FOUND = "REGISTERED_MODEL_NOT_FOUND"
    COLLECTION_NOT_FOUND = "COLLECTION_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    ALIAS_NOT_FOUND = "ALIAS_NOT_FOUND"
    PENDING_VERSION_NOT_FOUND = "PENDING_VERSION_NOT_FOUND"
    COLLECTION_EXISTS = "COLLECTION_EXISTS"
    ALIAS_EXPECTATION_FAILED = "ALIAS_EXPECTATION_FAILED"
    ALIAS_PROTECTED = "ALIAS_PROTECTED"
    VERSION_IN_USE = "VERSION_IN_USE"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    COLLECTION_KIND_MISMATCH = "COLLECTION_KIND_MISMATCH"
    MISSING_BLOB = "MISSING_BLOB"
    VERSION_ALREADY_COMMITTED = "VERSION_ALREADY_COMMITTED"
    COLLECTION_NOT_EMPTY = "COLLECTION_NOT_EMPTY"
    GC_IN_PROGRESS = "GC_IN_PROGRESS"
    AUTHENTICATION_DISABLED = "AUTHENTICATION_DISABLED"
    STORAGE_FULL = "STORAGE_FULL"
    STREAM_LIMIT_REACHED = "STREAM_LIMIT_REACHED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    BLOB_SERVICE_UNAVAILABLE = "BLOB_SERVICE_UNAVAILABLE"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"
    TOKEN_EXISTS = "TOKEN_EXISTS"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class RegistryError(Exception):
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


class InvalidArgument(RegistryError):
    code = "INVALID_ARGUMENT"
    default_reason = Reason.FIELD_INVALID


class NotFound(RegistryError):
    code = "NOT_FOUND"
    default_reason = Reason.COLLECTION_NOT_FOUND


class AlreadyExists(RegistryError):
    code = "ALREADY_EXISTS"
    default_reason = Reason.COLLECTION_EXISTS


class OutOfRange(RegistryError):
    """A position past the end of what exists, e.g. a Watch cursor beyond the last event."""

    code = "OUT_OF_RANGE"
    default_reason = Reason.FIELD_INVALID


class FailedPrecondition(RegistryError):
    code = "FAILED_PRECONDITION"
    default_reason = Reason.VERSION_ALREADY_COMMITTED

    def __init__(
        self,
        message: str,
        violations: list[tuple[str, str, str]] | None = None,
        *,
        reason: Reason | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """``violations`` are (type, subject, description) triples a client can act on."""
        super().__init__(message, reason, metadata)
        self.violations = violations or []


# The violation type of a commit whose manifest names content the blob service lacks;
# the subject is "blobs/<sha256>/<size>". Clients upload those blobs and commit again.
MISSING_BLOB = "MISSING_BLOB"


class ResourceExhausted(RegistryError):
    """The metadata database has no room left (its disk is full); free space, then retry."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = Reason.STORAGE_FULL


class Unavailable(RegistryError):
    """A dependency (the database or the blob service) cannot be reached; retry later."""

    code = "UNAVAILABLE"
    default_reason = Reason.DATABASE_UNAVAILABLE


class PermissionDenied(RegistryError):
    """The caller's token does not allow this (authentication on): its role, its scope, or a protected alias."""

    code = "PERMISSION_DENIED"
    default_reason = Reason.PERMISSION_DENIED
