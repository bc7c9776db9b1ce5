"""Domain errors of the metadata service.

Code below the servicer raises these; the servicer maps each to the gRPC status named by
``code`` in one place, so no layer but the servicer knows about gRPC.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class; ``code`` names the gRPC status code the error maps to."""

    code = "UNKNOWN"


class InvalidArgument(RegistryError):
    code = "INVALID_ARGUMENT"


class NotFound(RegistryError):
    code = "NOT_FOUND"


class AlreadyExists(RegistryError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(RegistryError):
    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, violations: list[tuple[str, str, str]] | None = None) -> None:
        """``violations`` are (type, subject, description) triples a client can act on."""
        super().__init__(message)
        self.violations = violations or []


# The violation type of a commit whose manifest names content the blob service lacks;
# the subject is "blobs/<sha256>/<size>". Clients upload those blobs and commit again.
MISSING_BLOB = "MISSING_BLOB"


class ResourceExhausted(RegistryError):
    """The metadata database has no room left (its disk is full); free space, then retry."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(RegistryError):
    """A dependency (the database or the blob service) cannot be reached; retry later."""

    code = "UNAVAILABLE"
