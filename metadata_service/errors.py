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


class Unavailable(RegistryError):
    """A dependency (the database or the blob service) cannot be reached; retry later."""

    code = "UNAVAILABLE"
