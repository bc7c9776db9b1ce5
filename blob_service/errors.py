"""Domain errors of the blob service.

Code below the servicer raises these; the servicer maps each to a gRPC status in one
place, so no layer but the servicer knows about gRPC.
"""

from __future__ import annotations


class BlobError(Exception):
    """Base class; ``code`` names the gRPC status code the error maps to."""

    code = "UNKNOWN"


class InvalidArgument(BlobError):
    code = "INVALID_ARGUMENT"


class NotFound(BlobError):
    code = "NOT_FOUND"


class OutOfRange(BlobError):
    code = "OUT_OF_RANGE"


class DataLoss(BlobError):
    code = "DATA_LOSS"


class Unavailable(BlobError):
    """The storage backend cannot be reached; the call may succeed if retried."""

    code = "UNAVAILABLE"


class Aborted(BlobError):
    """A concurrent operation got in the way; retry after QueryWriteStatus."""

    code = "ABORTED"


class StorageFull(BlobError):
    """The store has no room (a full disk, a quota, an S3 server out of space)."""

    code = "RESOURCE_EXHAUSTED"
