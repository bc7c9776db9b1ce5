"""The mreg client: push and pull model versions, manage aliases and registered models.

``Registry`` is the entry point; what it returns is defined in ``mreg.client.models`` and
what it raises in ``mreg.client.errors``.
"""

from __future__ import annotations

from mreg.client.channels import Credentials
from mreg.client.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    MregError,
    NotFound,
    PermissionDenied,
    PushInterrupted,
    Unauthenticated,
    Unavailable,
)
from mreg.client.models import (
    Artifact,
    Event,
    Link,
    ManifestEntry,
    Project,
    RegisteredModel,
    Resolution,
    Token,
    Version,
)
from mreg.client.registry import PullResult, PushResult, Registry
from mreg.client.settings import ClientSettings

__all__ = [
    "AlreadyExists",
    "Artifact",
    "ClientSettings",
    "Credentials",
    "DataLoss",
    "Event",
    "FailedPrecondition",
    "InvalidArgument",
    "Link",
    "ManifestEntry",
    "MregError",
    "NotFound",
    "PermissionDenied",
    "Project",
    "PullResult",
    "PushInterrupted",
    "PushResult",
    "RegisteredModel",
    "Registry",
    "Resolution",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Version",
]
